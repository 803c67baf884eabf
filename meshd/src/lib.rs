//! meshd, the node daemon. So far: [`control`], the client side of the control protocol.

pub mod control;
