//! rkyv support for the engine's own field types, so `net` can put the model
//! on the wire without a parallel set of wire structs.
//!
//! - [`ArcStr`]: an `Arc<str>` archived as a plain string (inline up to 8
//!   bytes) instead of rkyv's shared pointer: the model's strings are small
//!   and rarely shared by pointer, so deduplicating them would cost a hash
//!   lookup per string for little gain.
//! - [`SymText`]: an interned [`Sym`] archived as its text and re-interned on
//!   the way back, since a `Sym`'s number is only meaningful in one process.
//! - [`SharedTaskStates`]: an allocation's task-state map; the empty map comes
//!   back as the one shared [`no_task_states`] so a restored allocation costs
//!   no extra allocation, as a placed one does not.
//! - The 128-bit ids archive as little-endian `u128`s (they are
//!   `#[repr(packed)]`, which the derive cannot take references into).
//!
//! Only the shape lives here; the codecs, headers and checksums are `net`'s.

use std::sync::Arc;

use rkyv::collections::btree_map::{ArchivedBTreeMap, BTreeMapResolver};
use rkyv::primitive::ArchivedU128;
use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::string::{ArchivedString, StringResolver};
use rkyv::with::{ArchiveWith, DeserializeWith, Identity, MapKV, SerializeWith};
use rkyv::{Archive, Deserialize, Place, Serialize};

use super::{ArchivedTaskState, TaskState, TaskStates, no_task_states};
use crate::ids::{AllocId, DeploymentId, EvalId, NodeId};
use crate::intern::Sym;

/// Archives an `Arc<str>` as a string; deserializes into a fresh `Arc<str>`.
#[derive(Debug)]
pub struct ArcStr;

impl ArchiveWith<Arc<str>> for ArcStr {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve_with(field: &Arc<str>, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(field, resolver, out);
    }
}

impl<S> SerializeWith<Arc<str>, S> for ArcStr
where
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize_with(field: &Arc<str>, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(field, serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedString, Arc<str>, D> for ArcStr {
    fn deserialize_with(field: &ArchivedString, _: &mut D) -> Result<Arc<str>, D::Error> {
        Ok(Arc::from(field.as_str()))
    }
}

/// Archives a [`Sym`] as its text; deserializing interns the text again.
#[derive(Debug)]
pub struct SymText;

impl ArchiveWith<Sym> for SymText {
    type Archived = ArchivedString;
    type Resolver = StringResolver;

    fn resolve_with(field: &Sym, resolver: StringResolver, out: Place<ArchivedString>) {
        ArchivedString::resolve_from_str(&field.text(), resolver, out);
    }
}

impl<S> SerializeWith<Sym, S> for SymText
where
    S: Fallible + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize_with(field: &Sym, serializer: &mut S) -> Result<StringResolver, S::Error> {
        ArchivedString::serialize_from_str(&field.text(), serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedString, Sym, D> for SymText {
    fn deserialize_with(field: &ArchivedString, _: &mut D) -> Result<Sym, D::Error> {
        Ok(Sym::new(field.as_str()))
    }
}

type TaskStatesWith = MapKV<ArcStr, Identity>;

/// Archives `Arc<BTreeMap<Arc<str>, TaskState>>` as the map itself; an empty
/// map deserializes to the shared [`no_task_states`].
#[derive(Debug)]
pub struct SharedTaskStates;

impl ArchiveWith<Arc<TaskStates>> for SharedTaskStates {
    type Archived = ArchivedBTreeMap<ArchivedString, ArchivedTaskState>;
    type Resolver = BTreeMapResolver;

    fn resolve_with(field: &Arc<TaskStates>, resolver: BTreeMapResolver, out: Place<Self::Archived>) {
        <TaskStatesWith as ArchiveWith<TaskStates>>::resolve_with(field, resolver, out);
    }
}

impl<S> SerializeWith<Arc<TaskStates>, S> for SharedTaskStates
where
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
    TaskState: Serialize<S>,
{
    fn serialize_with(field: &Arc<TaskStates>, serializer: &mut S) -> Result<BTreeMapResolver, S::Error> {
        <TaskStatesWith as SerializeWith<TaskStates, S>>::serialize_with(field, serializer)
    }
}

impl<D> DeserializeWith<ArchivedBTreeMap<ArchivedString, ArchivedTaskState>, Arc<TaskStates>, D> for SharedTaskStates
where
    D: Fallible + ?Sized,
    ArchivedTaskState: Deserialize<TaskState, D>,
{
    fn deserialize_with(
        field: &ArchivedBTreeMap<ArchivedString, ArchivedTaskState>,
        deserializer: &mut D,
    ) -> Result<Arc<TaskStates>, D::Error> {
        if field.is_empty() {
            return Ok(no_task_states());
        }
        let map = <TaskStatesWith as DeserializeWith<_, TaskStates, D>>::deserialize_with(field, deserializer)?;
        Ok(Arc::new(map))
    }
}

/// Ids are plain `u128`s on the wire. Hand-written because the ids are
/// `#[repr(packed)]`: the derive would take references to their field.
macro_rules! archive_id_as_u128 {
    ($($id:ident),* $(,)?) => {$(
        impl Archive for $id {
            type Archived = ArchivedU128;
            type Resolver = ();

            fn resolve(&self, resolver: (), out: Place<Self::Archived>) {
                let raw = self.0;
                raw.resolve(resolver, out);
            }
        }

        impl<S: Fallible + ?Sized> Serialize<S> for $id {
            fn serialize(&self, _: &mut S) -> Result<(), S::Error> {
                Ok(())
            }
        }

        impl<D: Fallible + ?Sized> Deserialize<$id, D> for ArchivedU128 {
            fn deserialize(&self, _: &mut D) -> Result<$id, D::Error> {
                Ok($id(self.to_native()))
            }
        }
    )*};
}

archive_id_as_u128!(NodeId, AllocId, EvalId, DeploymentId);
