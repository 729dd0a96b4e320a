//! Transport sockets: Envoy's TLS contexts -> [`UpstreamTls`] / [`DownstreamTls`].
//!
//! What is honoured: certificates from files or SDS `default` (the workload certificate),
//! validation by a CA file or SDS `ROOTCA` (the mesh roots) with URI/DNS SAN matchers, SNI,
//! ALPN (h2, http/1.1), `require_client_certificate`, and per-endpoint transport matches. A
//! filter chain may also take its certificate and roots from other SDS secrets over ADS (a
//! gateway's `kubernetes://NAME`), which [`secret`] converts. Anything else that would change
//! a handshake is refused by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Metadata, TransportSocket, config_source, data_source, transport_socket,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    SubjectAltNameMatcher, TlsCertificate, UpstreamTlsContext,
    common_tls_context::ValidationContextType, secret, subject_alt_name_matcher::SanType,
};
use envoy_types::pb::google::protobuf::value::Kind;

use super::{At, ConvertError, string_match};
use crate::config::{
    CertificateSource, DownstreamTls, Loaded, RootsSource, SanKind, SanMatcher, SdsSecret,
    TransportMatch, UpstreamTls, Validation,
};

const TLS_SOCKET: &str = "envoy.transport_sockets.tls";
const UPSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const DOWNSTREAM: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const RAW_BUFFER: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";
/// The SDS name of the workload certificate and of the mesh roots, as Istio names them.
pub const WORKLOAD_SECRET: &str = "default";
pub const ROOTS_SECRET: &str = "ROOTCA";
/// Where Envoy reads an endpoint's transport match labels.
const SOCKET_MATCH_METADATA: &str = "envoy.transport_socket_match";

/// A cluster's transport socket: `None` for plaintext (absent or raw_buffer).
pub(super) fn upstream(
    at: &At<'_>,
    socket: Option<&TransportSocket>,
) -> Result<Option<Arc<UpstreamTls>>, ConvertError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    let Some(any) = typed(at, socket)? else {
        return Ok(None);
    };
    let at = at.at("typed_config");
    let ctx: UpstreamTlsContext = at.decode(any, UPSTREAM)?;
    let mut rest = ctx.clone();
    rest.common_tls_context = None;
    rest.sni = String::new();
    if rest != UpstreamTlsContext::default() {
        return Err(at.unsupported(
            "upstream TLS settings other than common_tls_context and sni (auto SNI, renegotiation, session keys, RSA key usage)",
        ));
    }
    let common = ctx.common_tls_context.unwrap_or_default();
    let at = at.at("common_tls_context");
    let (certificate, validation, alpn) = common_context(&at, &common)?;
    let fetched = matches!(certificate, Some(CertificateSource::Sds { .. }))
        || matches!(
            validation.as_ref().map(|v| &v.roots),
            Some(RootsSource::Sds { .. })
        );
    if fetched {
        return Err(at.unsupported(format!(
            "SDS secrets other than {WORKLOAD_SECRET:?} and {ROOTS_SECRET:?} on a cluster (only filter chains fetch them)"
        )));
    }
    let validation = validation.ok_or_else(|| {
        at.at("validation_context_type").unsupported(
            "TLS to an upstream without a trusted CA (strait-proxy always verifies the server)",
        )
    })?;
    Ok(Some(Arc::new(UpstreamTls {
        sni: (!ctx.sni.is_empty()).then(|| Arc::from(ctx.sni.as_str())),
        alpn,
        certificate,
        validation,
    })))
}

/// A filter chain's transport socket: `None` for plaintext.
pub(super) fn downstream(
    at: &At<'_>,
    socket: Option<&TransportSocket>,
) -> Result<Option<Arc<DownstreamTls>>, ConvertError> {
    let Some(socket) = socket else {
        return Ok(None);
    };
    let Some(any) = typed(at, socket)? else {
        return Ok(None);
    };
    let at = at.at("typed_config");
    let ctx: DownstreamTlsContext = at.decode(any, DOWNSTREAM)?;
    let mut rest = ctx.clone();
    rest.common_tls_context = None;
    rest.require_client_certificate = None;
    if rest != DownstreamTlsContext::default() {
        return Err(at.unsupported(
            "downstream TLS settings other than common_tls_context and require_client_certificate (require_sni, session tickets and timeouts, OCSP)",
        ));
    }
    let require = ctx.require_client_certificate.is_some_and(|b| b.value);
    let common = ctx.common_tls_context.unwrap_or_default();
    let at = at.at("common_tls_context");
    let (certificate, validation, alpn) = common_context(&at, &common)?;
    let certificate = certificate.ok_or_else(|| {
        at.at("tls_certificates")
            .invalid("a TLS server needs a certificate")
    })?;
    if require && validation.is_none() {
        return Err(at
            .at("validation_context_type")
            .invalid("client certificates are required but nothing validates them"));
    }
    Ok(Some(Arc::new(DownstreamTls {
        certificate,
        validation,
        require_client_certificate: require,
        alpn,
    })))
}

/// Transport socket matches on endpoint metadata (Istio's auto mTLS).
pub(super) fn matches(
    at: &At<'_>,
    list: &[TransportSocketMatch],
) -> Result<Vec<TransportMatch>, ConvertError> {
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let at = at.at(format!("transport_socket_matches[{i}]"));
            let mut labels = BTreeMap::new();
            for (k, v) in m.r#match.iter().flat_map(|s| s.fields.iter()) {
                let Some(Kind::StringValue(v)) = &v.kind else {
                    return Err(at
                        .at(format!("match.{k}"))
                        .unsupported("matching on non-string metadata"));
                };
                labels.insert(Arc::from(k.as_str()), Arc::from(v.as_str()));
            }
            Ok(TransportMatch {
                name: m.name.as_str().into(),
                labels,
                tls: upstream(&at.at("transport_socket"), m.transport_socket.as_ref())?,
            })
        })
        .collect()
}

/// An endpoint's `envoy.transport_socket_match` metadata (string values).
pub(super) fn endpoint_labels(
    at: &At<'_>,
    metadata: Option<&Metadata>,
) -> Result<BTreeMap<Arc<str>, Arc<str>>, ConvertError> {
    let mut labels = BTreeMap::new();
    let Some(fields) = metadata
        .and_then(|m| m.filter_metadata.get(SOCKET_MATCH_METADATA))
        .map(|s| &s.fields)
    else {
        return Ok(labels);
    };
    for (k, v) in fields {
        let Some(Kind::StringValue(v)) = &v.kind else {
            return Err(at
                .at(format!("metadata.{SOCKET_MATCH_METADATA}.{k}"))
                .unsupported("non-string transport match metadata"));
        };
        labels.insert(Arc::from(k.as_str()), Arc::from(v.as_str()));
    }
    Ok(labels)
}

/// The typed config of a TLS socket; `None` for raw_buffer.
fn typed<'a>(
    at: &At<'_>,
    socket: &'a TransportSocket,
) -> Result<Option<&'a envoy_types::pb::google::protobuf::Any>, ConvertError> {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else {
        return Err(at.at("typed_config").invalid("missing"));
    };
    if any.type_url == RAW_BUFFER {
        return Ok(None);
    }
    if socket.name != TLS_SOCKET && any.type_url != UPSTREAM && any.type_url != DOWNSTREAM {
        return Err(at.unsupported(format!("transport socket {:?}", socket.name)));
    }
    Ok(Some(any))
}

type Common = (Option<CertificateSource>, Option<Validation>, Vec<Arc<str>>);

fn common_context(at: &At<'_>, c: &CommonTlsContext) -> Result<Common, ConvertError> {
    let mut rest = c.clone();
    rest.tls_certificates.clear();
    rest.tls_certificate_sds_secret_configs.clear();
    rest.validation_context_type = None;
    rest.alpn_protocols.clear();
    if rest != CommonTlsContext::default() {
        return Err(at.unsupported(
            "TLS settings other than certificates, validation and ALPN (tls_params, certificate providers, custom handshakers, key logs)",
        ));
    }
    for (i, p) in c.alpn_protocols.iter().enumerate() {
        if p != "h2" && p != "http/1.1" {
            return Err(at
                .at(format!("alpn_protocols[{i}]"))
                .unsupported(format!("ALPN protocol {p:?} (only h2 and http/1.1)")));
        }
    }
    let alpn = c
        .alpn_protocols
        .iter()
        .map(|p| Arc::from(p.as_str()))
        .collect();
    let certificate = match (
        c.tls_certificates.as_slice(),
        c.tls_certificate_sds_secret_configs.as_slice(),
    ) {
        ([], []) => None,
        ([cert], []) => {
            let at = at.at("tls_certificates[0]");
            let mut rest = cert.clone();
            rest.certificate_chain = None;
            rest.private_key = None;
            if rest != Default::default() {
                return Err(at.unsupported(
                    "certificate settings other than certificate_chain and private_key",
                ));
            }
            let chain = file(&at.at("certificate_chain"), cert.certificate_chain.as_ref())?;
            let key = file(&at.at("private_key"), cert.private_key.as_ref())?;
            let loaded = crate::tls::load_certified_key(&chain, &key).map_err(|e| at.invalid(e))?;
            Some(CertificateSource::Files {
                chain: chain.into(),
                key: key.into(),
                loaded: Loaded(loaded),
            })
        }
        ([], [sds]) => Some(
            match sds_name(&at.at("tls_certificate_sds_secret_configs[0]"), sds)? {
                Sds::Workload => CertificateSource::Workload,
                Sds::Roots => {
                    return Err(at
                        .at("tls_certificate_sds_secret_configs[0].name")
                        .invalid(format!("{ROOTS_SECRET:?} holds roots, not a certificate")));
                }
                Sds::Fetched(name) => CertificateSource::Sds { name, loaded: None },
            },
        ),
        _ => {
            return Err(at
                .at("tls_certificates")
                .unsupported("more than one certificate per context"));
        }
    };
    let at = at.at("validation_context_type");
    let validation = match &c.validation_context_type {
        None => None,
        Some(ValidationContextType::ValidationContext(v)) => {
            Some(validation(&at.at("validation_context"), v, None)?)
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(sds)) => Some(Validation {
            roots: sds_roots(&at.at("validation_context_sds_secret_config"), sds)?,
            subject_alt_names: Vec::new(),
        }),
        Some(ValidationContextType::CombinedValidationContext(combined)) => {
            let at = at.at("combined_validation_context");
            let mut rest = combined.clone();
            rest.default_validation_context = None;
            rest.validation_context_sds_secret_config = None;
            if rest != Default::default() {
                return Err(at.unsupported("certificate provider validation contexts"));
            }
            let sds = combined
                .validation_context_sds_secret_config
                .as_ref()
                .ok_or_else(|| {
                    at.at("validation_context_sds_secret_config")
                        .invalid("missing")
                })?;
            let roots = sds_roots(&at.at("validation_context_sds_secret_config"), sds)?;
            let default = combined
                .default_validation_context
                .clone()
                .unwrap_or_default();
            Some(validation(
                &at.at("default_validation_context"),
                &default,
                Some(roots),
            )?)
        }
        Some(_) => return Err(at.unsupported("this validation context type")),
    };
    Ok((certificate, validation, alpn))
}

/// A validation context; `roots` are given when they come from SDS (then it must not name a CA).
fn validation(
    at: &At<'_>,
    v: &CertificateValidationContext,
    roots: Option<RootsSource>,
) -> Result<Validation, ConvertError> {
    let mut rest = v.clone();
    rest.trusted_ca = None;
    rest.match_typed_subject_alt_names.clear();
    if rest != CertificateValidationContext::default() {
        return Err(at.unsupported(
            "validation settings other than trusted_ca and match_typed_subject_alt_names (SPKI/hash pins, CRLs, system roots, custom validators)",
        ));
    }
    let roots = match (roots, &v.trusted_ca) {
        (Some(sds), None) => sds,
        (Some(_), Some(_)) => {
            return Err(at
                .at("trusted_ca")
                .unsupported("a CA file together with SDS roots"));
        }
        (None, Some(ca)) => {
            let path = file(&at.at("trusted_ca"), Some(ca))?;
            let anchors =
                crate::tls::load_anchors(&path).map_err(|e| at.at("trusted_ca").invalid(e))?;
            RootsSource::File {
                path: path.into(),
                anchors: Loaded(anchors),
            }
        }
        (None, None) => {
            return Err(at.at("trusted_ca").unsupported(
                "validation without trusted roots (strait-proxy always verifies chains)",
            ));
        }
    };
    let subject_alt_names = v
        .match_typed_subject_alt_names
        .iter()
        .enumerate()
        .map(|(i, m)| san(&at.at(format!("match_typed_subject_alt_names[{i}]")), m))
        .collect::<Result<_, _>>()?;
    Ok(Validation {
        roots,
        subject_alt_names,
    })
}

fn san(at: &At<'_>, m: &SubjectAltNameMatcher) -> Result<SanMatcher, ConvertError> {
    let kind = match SanType::try_from(m.san_type) {
        Ok(SanType::Uri) => SanKind::Uri,
        Ok(SanType::Dns) => SanKind::Dns,
        _ => {
            return Err(at
                .at("san_type")
                .unsupported("SAN types other than URI and DNS"));
        }
    };
    let matcher = m
        .matcher
        .as_ref()
        .ok_or_else(|| at.at("matcher").invalid("missing"))?;
    Ok(SanMatcher {
        kind,
        matcher: string_match(&at.at("matcher"), matcher)?,
    })
}

/// What an SDS name refers to.
enum Sds {
    /// `default`: this proxy's own certificate.
    Workload,
    /// `ROOTCA`: the mesh roots that came with it.
    Roots,
    /// Anything else: fetched over ADS.
    Fetched(Arc<str>),
}

/// An SDS reference, which must come over ADS (as straitd serves every secret).
fn sds_name(at: &At<'_>, sds: &SdsSecretConfig) -> Result<Sds, ConvertError> {
    let ads = matches!(
        sds.sds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        None | Some(config_source::ConfigSourceSpecifier::Ads(_))
    );
    if !ads {
        return Err(at
            .at("sds_config")
            .unsupported("SDS from a source other than ADS"));
    }
    Ok(match sds.name.as_str() {
        "" => return Err(at.at("name").invalid("empty")),
        WORKLOAD_SECRET => Sds::Workload,
        ROOTS_SECRET => Sds::Roots,
        name => Sds::Fetched(name.into()),
    })
}

fn sds_roots(at: &At<'_>, sds: &SdsSecretConfig) -> Result<RootsSource, ConvertError> {
    match sds_name(at, sds)? {
        Sds::Roots => Ok(RootsSource::Mesh),
        Sds::Workload => Err(at.at("name").invalid(format!(
            "{WORKLOAD_SECRET:?} holds a certificate, not roots"
        ))),
        Sds::Fetched(name) => Ok(RootsSource::Sds {
            name,
            anchors: None,
        }),
    }
}

/// An SDS secret that came over ADS: a certificate chain with its key, or trusted CAs, inline.
pub(super) fn secret(pb: &Secret) -> Result<SdsSecret, ConvertError> {
    let at = At::new("secret");
    let at = at.at(format!("{:?}", pb.name));
    let inline = |at: &At<'_>, source: Option<&DataSource>| -> Result<Vec<u8>, ConvertError> {
        match source.and_then(|s| s.specifier.as_ref()) {
            Some(data_source::Specifier::InlineString(s)) => Ok(s.as_bytes().to_vec()),
            Some(data_source::Specifier::InlineBytes(b)) => Ok(b.clone()),
            Some(_) => Err(at.unsupported("secret data other than inline (files, environment)")),
            None => Err(at.invalid("missing")),
        }
    };
    match &pb.r#type {
        Some(secret::Type::TlsCertificate(cert)) => {
            let at = at.at("tls_certificate");
            let mut rest = cert.clone();
            rest.certificate_chain = None;
            rest.private_key = None;
            if rest != TlsCertificate::default() {
                return Err(at.unsupported(
                    "certificate settings other than certificate_chain and private_key",
                ));
            }
            let chain = inline(&at.at("certificate_chain"), cert.certificate_chain.as_ref())?;
            let key =
                zeroize::Zeroizing::new(inline(&at.at("private_key"), cert.private_key.as_ref())?);
            let loaded =
                crate::tls::certified_key_from_pem(&chain, &key).map_err(|e| at.invalid(e))?;
            Ok(SdsSecret::Certificate(Loaded(loaded)))
        }
        Some(secret::Type::ValidationContext(v)) => {
            let at = at.at("validation_context");
            let mut rest = v.clone();
            rest.trusted_ca = None;
            if rest != CertificateValidationContext::default() {
                return Err(at.unsupported("validation secrets other than trusted_ca"));
            }
            let pem = inline(&at.at("trusted_ca"), v.trusted_ca.as_ref())?;
            let anchors =
                crate::tls::anchors_from_pem(&pem).map_err(|e| at.at("trusted_ca").invalid(e))?;
            Ok(SdsSecret::Roots(Loaded(anchors)))
        }
        _ => Err(at.unsupported("secret types other than tls_certificate and validation_context")),
    }
}

fn file(at: &At<'_>, source: Option<&DataSource>) -> Result<String, ConvertError> {
    match source.and_then(|s| s.specifier.as_ref()) {
        Some(data_source::Specifier::Filename(f)) if !f.is_empty() => Ok(f.clone()),
        Some(_) => Err(at.unsupported("inline or environment data (only files)")),
        None => Err(at.invalid("missing")),
    }
}
