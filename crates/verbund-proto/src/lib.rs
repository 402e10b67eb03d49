//! Generated gRPC code for the `verbund.v1` package.

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("verbund.v1");

    /// Encoded `FileDescriptorSet` of the verbund protos and their imports, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/verbund_descriptor.bin"));
}
