//! Generated protobuf types, clients and servers for Strait's own APIs (Istio's CA service).

/// Istio's APIs, as Istio's proto packages name them.
pub mod istio {
    /// `istio.v1`.
    pub mod v1 {
        /// `istio.v1.auth`: the certificate service workloads call for their certificates.
        pub mod auth {
            tonic::include_proto!("istio.v1.auth");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::istio::v1::auth::{IstioCertificateRequest, IstioCertificateResponse};
    use prost::Message;

    // Field numbers are the wire contract with istio-agent and ztunnel; pin them.
    #[test]
    fn field_numbers_match_istio() {
        let request = IstioCertificateRequest {
            csr: "c".into(),
            validity_duration: 5,
            metadata: Some(prost_types::Struct::default()),
        };
        // csr = 1 (len), validity_duration = 3 (varint), metadata = 4 (len).
        assert_eq!(request.encode_to_vec(), [0x0a, 1, b'c', 0x18, 5, 0x22, 0]);

        let response = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        // cert_chain = 200, wire type 2: tag varint (200 << 3 | 2) = 0xc2 0x0c.
        let bytes = response.encode_to_vec();
        assert_eq!(bytes, [0xc2, 0x0c, 1, b'a', 0xc2, 0x0c, 1, b'b']);
        assert_eq!(
            IstioCertificateResponse::decode(bytes.as_slice()).unwrap(),
            response
        );
    }

    #[test]
    fn service_name_matches_istio() {
        use super::istio::v1::auth::istio_certificate_service_server::SERVICE_NAME;
        assert_eq!(SERVICE_NAME, "istio.v1.auth.IstioCertificateService");
    }
}
