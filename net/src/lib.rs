//! Networking for Caravan servers: wire codecs (rkyv), the QUIC transport,
//! openraft's network and durable log storage, server RPC and the HTTP /v1 API.
//!
//! Not built yet: the engine runs in-process (see `caravan_engine::harness`)
//! until this crate carries its commands through raft.
