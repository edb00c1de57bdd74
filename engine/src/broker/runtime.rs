//! placeholder
#[derive(Debug)]
pub struct SharedBroker;
