//! Reads a device's certificate request the way Kubernetes reads it, and refuses anything
//! that could read otherwise.
//!
//! The controller approves the identity *it* reads in `spec.request`; the signer issues a
//! certificate for the identity *Kubernetes* reads there (Go's `pem.Decode`, block type
//! `CERTIFICATE REQUEST`, then `x509.ParseCertificateRequest`). Wherever two readers can
//! disagree, an approval for one name signs another: `pem.Decode` skips a block whose END
//! line does not match its BEGIN line and returns the next block, so a request whose first
//! block (badly closed) named the device and whose second named anyone at all was approved
//! for the first and signed for the second. So a request must have one reading only:
//!
//! - at most [`MAX_REQUEST_BYTES`], refused before any parsing;
//! - exactly one PEM block, labelled `CERTIFICATE REQUEST`, with matching BEGIN and END
//!   lines, no PEM headers, and nothing but whitespace around it;
//! - a body of base64 lines, strictly decoded (canonical padding, no stray bits);
//! - DER that the request consumes whole, with exactly its three parts and the request
//!   info's four;
//! - no attribute but one `extensionRequest` holding one value (Go reads only the first
//!   value of the first such attribute; other readers may read more).
//!
//! Stricter than Kubernetes is safe: such a request is denied, and the bootstrap's own
//! requests (rcgen, one block) always pass. Looser is not.
//!
//! The signature is not checked here: the apiserver refuses to store a request whose
//! signature does not verify (its CSR validation calls `CheckSignature`), the signer checks
//! it again before signing, and `spec.request` cannot change after creation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;
use x509_parser::asn1_rs::{Any, Class, FromDer, Oid, Tag};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::OID_PKCS9_EXTENSION_REQUEST;

/// A device's request is well under 4 KiB; anything past this is refused unread.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;

const LABEL: &str = "CERTIFICATE REQUEST";
const BEGIN: &str = "-----BEGIN CERTIFICATE REQUEST-----";
const END: &str = "-----END CERTIFICATE REQUEST-----";
/// How much of a line from the request a message quotes.
const QUOTE_CHARS: usize = 64;

/// Why a request does not have exactly one reading. The text is meant for the requester,
/// who sees it in the request's Denied condition.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Malformed {
    #[error("it is {0} bytes, over the {MAX_REQUEST_BYTES} read (a device's is under 4 KiB)")]
    TooLarge(usize),
    #[error("it is not text")]
    NotText,
    #[error("it must start with the line {BEGIN}, with nothing but whitespace before it")]
    NoBeginLine,
    #[error("the PEM block is labelled {0:?}, not {LABEL:?}")]
    WrongLabel(String),
    #[error("the PEM block has headers; a certificate request has none")]
    Headers,
    #[error("line {0} of the PEM block is not base64")]
    NotBase64Line(usize),
    #[error("the PEM block must end with the line {END}, not {0:?}")]
    WrongEnd(String),
    #[error("the PEM block has no END line")]
    NoEndLine,
    #[error("there is more than whitespace after the PEM block; send one block only")]
    TextAfterBlock,
    #[error("the PEM block's base64 is not canonical: {0}")]
    Base64(String),
    #[error("{0} bytes follow the request's DER inside the PEM block")]
    TrailingBytes(usize),
    #[error("the DER is not a certificate request: {0}")]
    NotDer(String),
    #[error("{0}")]
    Structure(String),
    #[error("it carries the attribute {0}; only one extensionRequest is allowed")]
    UnexpectedAttribute(String),
    #[error("it carries more than one extensionRequest attribute")]
    TwoExtensionRequests,
    #[error("its extensionRequest attribute holds {0} values, not one")]
    ExtensionRequestValues(usize),
}

/// The DER inside a PEM certificate request that has exactly one block and nothing else.
pub fn pem_to_der(pem: &[u8]) -> Result<Vec<u8>, Malformed> {
    if pem.len() > MAX_REQUEST_BYTES {
        return Err(Malformed::TooLarge(pem.len()));
    }
    let text = std::str::from_utf8(pem).map_err(|_| Malformed::NotText)?;
    let body = block_body(text)?;
    STANDARD
        .decode(body)
        .map_err(|e| Malformed::Base64(e.to_string()))
}

/// A certificate request read from DER that has exactly one reading (see the module doc).
pub fn parse(der: &[u8]) -> Result<X509CertificationRequest<'_>, Malformed> {
    check_structure(der)?;
    let (_, request) =
        X509CertificationRequest::from_der(der).map_err(|e| Malformed::NotDer(e.to_string()))?;
    Ok(request)
}

/// The whitespace Go's PEM reader passes over between and around lines.
fn is_blank(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

fn quote(line: &str) -> String {
    line.chars().take(QUOTE_CHARS).collect()
}

/// The base64 between the one BEGIN line and its END line, lines joined. The BEGIN line
/// must start a line (Go looks for it only there), every line between must be base64 (this
/// refuses headers, a second BEGIN and a wrong END alike), and the END line must be the
/// last that is not blank.
fn block_body(text: &str) -> Result<String, Malformed> {
    let start = text.trim_start_matches(is_blank);
    let skipped = &text[..text.len() - start.len()];
    if !(skipped.is_empty() || skipped.ends_with('\n')) {
        return Err(Malformed::NoBeginLine);
    }
    let mut lines = start
        .trim_end_matches(is_blank)
        .split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line));
    let first = lines.next().unwrap_or_default();
    if first != BEGIN {
        let label = first
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"));
        return Err(label.map_or(Malformed::NoBeginLine, |l| Malformed::WrongLabel(quote(l))));
    }
    let mut body = String::new();
    let mut number = 1;
    while let Some(line) = lines.next() {
        number += 1;
        if line == END {
            return match lines.next() {
                None => Ok(body),
                Some(_) => Err(Malformed::TextAfterBlock),
            };
        }
        if line.starts_with("-----") {
            return Err(Malformed::WrongEnd(quote(line)));
        }
        if line.contains(':') {
            return Err(Malformed::Headers);
        }
        if line.is_empty() || !line.bytes().all(is_base64) {
            return Err(Malformed::NotBase64Line(number));
        }
        body.push_str(line);
    }
    Err(Malformed::NoEndLine)
}

/// Walks the request's DER strictly, independently of the parser that reads its fields:
/// nothing after the request, `CertificationRequest` = {info, algorithm, signature},
/// `CertificationRequestInfo` = {version, subject, key, [0] attributes}, and no attribute
/// but one `extensionRequest` with one value.
fn check_structure(der: &[u8]) -> Result<(), Malformed> {
    let (rest, request) = Any::from_der(der).map_err(not_der)?;
    if !rest.is_empty() {
        return Err(Malformed::TrailingBytes(rest.len()));
    }
    expect(&request, Class::Universal, Tag::Sequence, "the request")?;
    let [info, _algorithm, _signature] = exactly(elements(request.data)?, "the request")?;
    expect(&info, Class::Universal, Tag::Sequence, "the request info")?;
    let [_version, _subject, _key, attributes] = exactly(elements(info.data)?, "the request info")?;
    expect(
        &attributes,
        Class::ContextSpecific,
        Tag(0),
        "the attributes",
    )?;
    let mut extension_requests = 0;
    for attribute in elements(attributes.data)? {
        check_attribute(&attribute)?;
        extension_requests += 1;
        if extension_requests > 1 {
            return Err(Malformed::TwoExtensionRequests);
        }
    }
    Ok(())
}

/// An attribute must be an `extensionRequest` whose SET holds exactly one value.
fn check_attribute(attribute: &Any<'_>) -> Result<(), Malformed> {
    expect(attribute, Class::Universal, Tag::Sequence, "an attribute")?;
    let [oid, values] = exactly(elements(attribute.data)?, "an attribute")?;
    let oid = Oid::try_from(oid).map_err(not_der)?;
    if oid != OID_PKCS9_EXTENSION_REQUEST {
        return Err(Malformed::UnexpectedAttribute(oid.to_id_string()));
    }
    expect(
        &values,
        Class::Universal,
        Tag::Set,
        "the extensionRequest's values",
    )?;
    match elements(values.data)?.len() {
        1 => Ok(()),
        n => Err(Malformed::ExtensionRequestValues(n)),
    }
}

fn not_der(e: impl std::fmt::Display) -> Malformed {
    Malformed::NotDer(e.to_string())
}

/// The DER elements `data` consists of, in order: every byte belongs to one.
fn elements(data: &[u8]) -> Result<Vec<Any<'_>>, Malformed> {
    let mut found = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (after, element) = Any::from_der(rest).map_err(not_der)?;
        found.push(element);
        rest = after;
    }
    Ok(found)
}

fn exactly<'a, const N: usize>(parts: Vec<Any<'a>>, what: &str) -> Result<[Any<'a>; N], Malformed> {
    let found = parts.len();
    parts
        .try_into()
        .map_err(|_| Malformed::Structure(format!("{what} has {found} parts, not {N}")))
}

/// `element` is constructed, with this class and tag.
fn expect(element: &Any<'_>, class: Class, tag: Tag, what: &str) -> Result<(), Malformed> {
    let header = &element.header;
    if header.class() == class && header.tag() == tag && header.is_constructed() {
        Ok(())
    } else {
        Err(Malformed::Structure(format!(
            "{what} is not a constructed {class:?} {tag:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{Attribute, CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    const CHALLENGE_PASSWORD: &[u64] = &[1, 2, 840, 113549, 1, 9, 7];
    const EXTENSION_REQUEST: &[u64] = &[1, 2, 840, 113549, 1, 9, 14];
    /// DER of SET { SEQUENCE {} }: an extensionRequest value with no extensions.
    const NO_EXTENSIONS: [u8; 4] = [0x31, 0x02, 0x30, 0x00];

    fn params(device: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "edgefleet:devices");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("edgefleet:device:{device}"));
        params
    }

    /// A signed request for `device` as rcgen writes it (the bootstrap uses rcgen), with
    /// extra attributes.
    fn request_der(device: &str, attributes: Vec<Attribute>) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let csr = params(device)
            .serialize_request_with_attributes(&key, attributes)
            .expect("csr");
        csr.der().to_vec()
    }

    fn request_pem(device: &str) -> String {
        let key = KeyPair::generate().expect("key");
        let csr = params(device).serialize_request(&key).expect("csr");
        csr.pem().expect("pem")
    }

    /// A PEM block as openssl writes one: 64 base64 characters a line.
    fn block(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    /// Both steps, as the approval runs them; the DER when the request passes.
    fn read(pem: &str) -> Result<Vec<u8>, Malformed> {
        let der = pem_to_der(pem.as_bytes())?;
        parse(&der)?;
        Ok(der)
    }

    #[test]
    fn the_bootstraps_request_is_read_with_lf_or_crlf_and_blank_lines_around() {
        let pem = request_pem("edge-1");
        let der = pem_to_der(pem.as_bytes()).expect("rcgen's PEM");
        let request = parse(&der).expect("rcgen's request");
        let subject = request.certification_request_info.subject.to_string();
        assert!(subject.contains("edgefleet:device:edge-1"), "{subject}");
        assert_eq!(read(&pem.replace('\n', "\r\n")), Ok(der.clone()));
        assert_eq!(read(&format!("\n\r\n{pem}\n  \t\n")), Ok(der.clone()));
        let with_extension_request = request_der("edge-1", vec![extension_request()]);
        assert!(read(&block(LABEL, &with_extension_request)).is_ok());
    }

    fn extension_request() -> Attribute {
        Attribute {
            oid: EXTENSION_REQUEST,
            values: NO_EXTENSIONS.to_vec(),
        }
    }

    /// The attack that joined any identity: Go skips the first block (its END line does
    /// not match) and Kubernetes signs the second.
    #[test]
    fn two_blocks_whose_first_has_a_wrong_end_line_are_refused() {
        let shown = request_pem("edge-1").replace(END, "-----END X-----");
        let smuggled = request_pem("edge-2");
        assert_eq!(
            read(&format!("{shown}{smuggled}")),
            Err(Malformed::WrongEnd("-----END X-----".into()))
        );
    }

    #[test]
    fn two_well_formed_blocks_are_refused() {
        let two = format!("{}{}", request_pem("edge-1"), request_pem("edge-2"));
        assert_eq!(read(&two), Err(Malformed::TextAfterBlock));
    }

    #[test]
    fn a_wrong_end_label_is_refused() {
        let pem = request_pem("edge-1").replace(END, "-----END CERTIFICATE-----");
        assert_eq!(
            read(&pem),
            Err(Malformed::WrongEnd("-----END CERTIFICATE-----".into()))
        );
        let cut = request_pem("edge-1").replace(&format!("{END}\n"), "");
        assert_eq!(read(&cut), Err(Malformed::NoEndLine));
    }

    #[test]
    fn text_after_the_end_line_is_refused() {
        let pem = request_pem("edge-1");
        assert_eq!(
            read(&format!("{pem}junk\n")),
            Err(Malformed::TextAfterBlock)
        );
        let same_line = pem.replace(END, &format!("{END} junk"));
        assert!(matches!(read(&same_line), Err(Malformed::WrongEnd(_))));
    }

    #[test]
    fn text_before_the_begin_line_is_refused() {
        let pem = request_pem("edge-1");
        assert_eq!(read(&format!("junk\n{pem}")), Err(Malformed::NoBeginLine));
        // Go finds a BEGIN line only at the start of a line.
        assert_eq!(read(&format!("  {pem}")), Err(Malformed::NoBeginLine));
        assert_eq!(read(""), Err(Malformed::NoBeginLine));
    }

    #[test]
    fn pem_headers_are_refused() {
        let headers = format!("{BEGIN}\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\n");
        let pem = request_pem("edge-1").replace(&format!("{BEGIN}\n"), &headers);
        assert_eq!(read(&pem), Err(Malformed::Headers));
    }

    #[test]
    fn bytes_after_the_der_inside_the_block_are_refused() {
        let mut der = request_der("edge-1", Vec::new());
        der.extend_from_slice(&[0x05, 0x00]);
        assert_eq!(read(&block(LABEL, &der)), Err(Malformed::TrailingBytes(2)));
    }

    #[test]
    fn extra_attributes_like_a_challenge_password_are_refused() {
        // SET { UTF8String "secret" }
        let password = Attribute {
            oid: CHALLENGE_PASSWORD,
            values: [&[0x31, 0x08, 0x0c, 0x06][..], b"secret"].concat(),
        };
        let der = request_der("edge-1", vec![password]);
        assert_eq!(
            read(&block(LABEL, &der)),
            Err(Malformed::UnexpectedAttribute(
                "1.2.840.113549.1.9.7".into()
            ))
        );
    }

    #[test]
    fn two_extension_requests_are_refused() {
        let der = request_der("edge-1", vec![extension_request(), extension_request()]);
        assert_eq!(
            read(&block(LABEL, &der)),
            Err(Malformed::TwoExtensionRequests)
        );
    }

    /// Go reads only an extensionRequest's first value; another reader may read the rest.
    #[test]
    fn an_extension_request_with_two_values_is_refused() {
        let two_values = Attribute {
            oid: EXTENSION_REQUEST,
            values: vec![0x31, 0x04, 0x30, 0x00, 0x30, 0x00],
        };
        let der = request_der("edge-1", vec![two_values]);
        assert_eq!(
            read(&block(LABEL, &der)),
            Err(Malformed::ExtensionRequestValues(2))
        );
    }

    #[test]
    fn other_block_types_are_refused() {
        let der = request_der("edge-1", Vec::new());
        assert_eq!(
            read(&block("NEW CERTIFICATE REQUEST", &der)),
            Err(Malformed::WrongLabel("NEW CERTIFICATE REQUEST".into()))
        );
        let key = KeyPair::generate().expect("key");
        let cert = params("edge-1").self_signed(&key).expect("cert").pem();
        assert_eq!(
            read(&cert),
            Err(Malformed::WrongLabel("CERTIFICATE".into()))
        );
        // A certificate's DER relabelled as a request is still no request.
        let relabelled = cert.replace("CERTIFICATE-----", "CERTIFICATE REQUEST-----");
        assert!(matches!(read(&relabelled), Err(Malformed::Structure(_))));
    }

    #[test]
    fn oversize_requests_are_refused_before_parsing() {
        let padded = format!("{}{}", request_pem("edge-1"), " ".repeat(MAX_REQUEST_BYTES));
        assert_eq!(
            pem_to_der(padded.as_bytes()),
            Err(Malformed::TooLarge(padded.len()))
        );
        let junk = vec![0xff; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            pem_to_der(&junk),
            Err(Malformed::TooLarge(MAX_REQUEST_BYTES + 1))
        );
    }

    /// Go's decoder ignores stray bits in the last base64 character; read strictly, such
    /// a body is refused rather than read one way here and another there.
    #[test]
    fn non_canonical_base64_is_refused() {
        let stray_bits = format!("{BEGIN}\nQR==\n{END}\n");
        assert!(matches!(read(&stray_bits), Err(Malformed::Base64(_))));
        let no_padding = format!("{BEGIN}\nQQ\n{END}\n");
        assert!(matches!(read(&no_padding), Err(Malformed::Base64(_))));
        let not_base64 = format!("{BEGIN}\nQQ==!\n{END}\n");
        assert_eq!(read(&not_base64), Err(Malformed::NotBase64Line(2)));
    }
}
