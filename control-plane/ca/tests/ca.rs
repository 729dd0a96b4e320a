//! Integration tests: the real gRPC service on 127.0.0.1, plugin CAs, and chains checked by webpki and openssl.

mod ca {
    pub mod support;

    mod grpc;
    mod mtls;
    mod persistence;
    mod plugin;
}
