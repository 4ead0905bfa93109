//! Quarry's public contract, generated from `proto/quarry/v1`: messages, clients and servers
//! for every role, plus the encoded descriptor set that server reflection serves.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

/// Package `quarry.v1`.
pub mod v1 {
    tonic::include_proto!("quarry.v1");
}

/// Encoded `FileDescriptorSet` of every Quarry proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("quarry_descriptor");
