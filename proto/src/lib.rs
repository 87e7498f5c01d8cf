//! Generated code for the `weapp.session.v1` gRPC package (see `weapp/session/v1/session.proto`).

pub mod session {
    pub mod v1 {
        tonic::include_proto!("weapp.session.v1");
    }
}

/// Encoded `FileDescriptorSet` of every weapp proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("weapp_descriptor");
