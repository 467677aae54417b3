#include "sluice/common/x509.h"

#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include <ctime>

namespace sluice::x509 {

namespace {

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
using Bio = std::unique_ptr<BIO, BioFree>;

Bio memBio(const std::string& data) {
  return Bio(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string drain(BIO* bio) {
  char* p = nullptr;
  long n = BIO_get_mem_data(bio, &p);
  return std::string(p, static_cast<size_t>(n));
}

bool validLabel(const std::string& s) {
  if (s.empty() || s.size() > 253) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_'))
      return false;
  return true;
}

bool isP256(EVP_PKEY* key) {
  if (EVP_PKEY_get_base_id(key) != EVP_PKEY_EC) return false;
  char group[64] = {};
  size_t len = 0;
  if (EVP_PKEY_get_utf8_string_param(key, "group", group, sizeof(group), &len) != 1) return false;
  return std::string(group) == "prime256v1";
}

std::chrono::system_clock::time_point toTimePoint(const ASN1_TIME* t) {
  std::tm tm{};
  ASN1_TIME_to_tm(t, &tm);
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

}  // namespace

std::string opensslError() {
  std::string out;
  unsigned long e;
  char buf[256];
  while ((e = ERR_get_error()) != 0) {
    ERR_error_string_n(e, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

bool validTrustDomain(const std::string& trust_domain) { return validLabel(trust_domain); }

std::optional<SpiffeId> SpiffeId::parse(const std::string& uri) {
  const std::string scheme = "spiffe://";
  if (uri.rfind(scheme, 0) != 0) return std::nullopt;
  std::string rest = uri.substr(scheme.size());
  auto slash = rest.find('/');
  if (slash == std::string::npos) return std::nullopt;
  SpiffeId id;
  id.trust_domain = rest.substr(0, slash);
  std::string path = rest.substr(slash);
  const std::string ns = "/ns/", sa = "/sa/";
  if (path.rfind(ns, 0) != 0) return std::nullopt;
  auto sa_at = path.find(sa, ns.size());
  if (sa_at == std::string::npos) return std::nullopt;
  id.ns = path.substr(ns.size(), sa_at - ns.size());
  id.sa = path.substr(sa_at + sa.size());
  if (!validLabel(id.trust_domain) || !validLabel(id.ns) || !validLabel(id.sa)) return std::nullopt;
  return id;
}

Result<PKey> generateP256() {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  if (!key) return fail("generating an ECDSA P-256 key failed: " + opensslError());
  return PKey(key);
}

std::string privateKeyPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr);
  return drain(bio.get());
}

Result<PKey> parsePrivateKey(const std::string& pem) {
  auto bio = memBio(pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr);
  if (!key) return fail("not a PEM private key: " + opensslError());
  return PKey(key);
}

Result<std::string> makeCsr(EVP_PKEY* key, const std::string& uri) {
  std::unique_ptr<X509_REQ, decltype(&X509_REQ_free)> req(X509_REQ_new(), X509_REQ_free);
  X509_REQ_set_version(req.get(), 0);
  X509_REQ_set_pubkey(req.get(), key);
  std::unique_ptr<STACK_OF(X509_EXTENSION), void (*)(STACK_OF(X509_EXTENSION)*)> exts(
      sk_X509_EXTENSION_new_null(),
      [](STACK_OF(X509_EXTENSION) * s) { sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free); });
  std::string value = "URI:" + uri;
  X509_EXTENSION* san = X509V3_EXT_conf_nid(nullptr, nullptr, NID_subject_alt_name, value.c_str());
  if (!san) return fail("invalid SAN " + uri + ": " + opensslError());
  sk_X509_EXTENSION_push(exts.get(), san);
  X509_REQ_add_extensions(req.get(), exts.get());
  if (X509_REQ_sign(req.get(), key, EVP_sha256()) <= 0)
    return fail("signing the CSR failed: " + opensslError());
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_REQ(bio.get(), req.get());
  return drain(bio.get());
}

Result<CsrInfo> inspectCsr(const std::string& pem) {
  if (pem.size() > 16 * 1024) return fail("CSR larger than 16 KiB");
  auto bio = memBio(pem);
  std::unique_ptr<X509_REQ, decltype(&X509_REQ_free)> req(
      PEM_read_bio_X509_REQ(bio.get(), nullptr, nullptr, nullptr), X509_REQ_free);
  if (!req) return fail("not a PEM certificate signing request");
  PKey pub(X509_REQ_get_pubkey(req.get()));
  if (!pub) return fail("CSR without a public key");
  if (!isP256(pub.get())) return fail("CSR key must be ECDSA P-256");
  if (X509_REQ_verify(req.get(), pub.get()) != 1) return fail("CSR signature does not verify");
  std::unique_ptr<STACK_OF(X509_EXTENSION), void (*)(STACK_OF(X509_EXTENSION)*)> exts(
      X509_REQ_get_extensions(req.get()),
      [](STACK_OF(X509_EXTENSION) * s) { sk_X509_EXTENSION_pop_free(s, X509_EXTENSION_free); });
  if (!exts) return fail("CSR has no subjectAltName extension");
  GENERAL_NAMES* names = static_cast<GENERAL_NAMES*>(
      X509V3_get_d2i(exts.get(), NID_subject_alt_name, nullptr, nullptr));
  if (!names) return fail("CSR has no subjectAltName extension");
  std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> guard(names, GENERAL_NAMES_free);
  if (sk_GENERAL_NAME_num(names) != 1)
    return fail("CSR must ask for exactly one subjectAltName (the SPIFFE URI)");
  GENERAL_NAME* n = sk_GENERAL_NAME_value(names, 0);
  if (n->type != GEN_URI) return fail("CSR subjectAltName must be a URI");
  const ASN1_IA5STRING* ia5 = n->d.uniformResourceIdentifier;
  CsrInfo info;
  info.uri.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(ia5)),
                  ASN1_STRING_length(ia5));
  info.public_key = std::move(pub);
  return info;
}

Result<Cert> parseCert(const std::string& pem) {
  auto bio = memBio(pem);
  X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
  if (!c) return fail("not a PEM certificate: " + opensslError());
  return Cert(c);
}

Result<std::vector<Cert>> parseChain(const std::string& pem) {
  auto bio = memBio(pem);
  std::vector<Cert> out;
  while (X509* c = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(c);
  ERR_clear_error();  // the read that ends the loop leaves "no start line"
  if (out.empty()) return fail("no PEM certificate found");
  return out;
}

std::string certPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return drain(bio.get());
}

namespace {
// Every URI SAN of `cert`, in order.
std::vector<std::string> uriSans(X509* cert) {
  GENERAL_NAMES* names =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  std::vector<std::string> out;
  if (!names) return out;
  std::unique_ptr<GENERAL_NAMES, decltype(&GENERAL_NAMES_free)> guard(names, GENERAL_NAMES_free);
  for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
    GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
    if (n->type != GEN_URI) continue;
    const ASN1_IA5STRING* u = n->d.uniformResourceIdentifier;
    out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(u)),
                     ASN1_STRING_length(u));
  }
  return out;
}
}  // namespace

std::optional<std::string> uriSan(X509* cert) {
  auto uris = uriSans(cert);
  if (uris.empty()) return std::nullopt;
  return uris.front();
}

Result<std::string> svidId(X509* cert) {
  auto uris = uriSans(cert);
  if (uris.empty()) return fail("the certificate carries no SPIFFE ID (no URI SAN)");
  if (uris.size() > 1)
    return fail("the certificate carries " + std::to_string(uris.size()) +
                " URI SANs (an X.509-SVID has exactly one)");
  if (X509_get_extension_flags(cert) & EXFLAG_CA)  // basicConstraints CA:TRUE, whatever keyUsage
    return fail("the certificate of " + uris.front() +
                " is a CA certificate (an X.509-SVID leaf has basicConstraints CA:FALSE)");
  return uris.front();
}

std::string serialHex(X509* cert) {
  BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr);
  char* hex = BN_bn2hex(bn);
  std::string out = hex ? hex : "";
  OPENSSL_free(hex);
  BN_free(bn);
  return out;
}

std::chrono::system_clock::time_point notBefore(X509* cert) {
  return toTimePoint(X509_get0_notBefore(cert));
}
std::chrono::system_clock::time_point notAfter(X509* cert) {
  return toTimePoint(X509_get0_notAfter(cert));
}

std::string subjectText(X509* cert) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio == nullptr) return "";
  X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253);
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, n > 0 ? static_cast<size_t>(n) : 0);
  BIO_free(bio);
  return out;
}

}  // namespace sluice::x509
