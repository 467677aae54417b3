#include "controlplane/ca/authority.h"

#include <openssl/bn.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "sluice/common/files.h"
#include "sluice/common/fmt.h"

namespace sluice::controlplane::ca {

namespace {

Result<void> writeFile(const std::string& path, const std::string& data, mode_t mode) {
  std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << data;
    if (!out) return failErrno("cannot write " + tmp);
  }
  ::chmod(tmp.c_str(), mode);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return failErrno("cannot rename " + tmp);
  return {};
}

bool addExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer ? issuer : cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return false;
  bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// Self-signed root for the development CA.
Result<x509::Cert> selfSigned(EVP_PKEY* key, const std::string& cn, long days) {
  x509::Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("sluice"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), days * 86400);
  X509_set_pubkey(cert.get(), key);
  if (!addExt(cert.get(), nullptr, NID_basic_constraints, "critical,CA:TRUE") ||
      !addExt(cert.get(), nullptr, NID_key_usage, "critical,keyCertSign,cRLSign") ||
      !addExt(cert.get(), nullptr, NID_subject_key_identifier, "hash"))
    return fail("building the development root failed: " + x509::opensslError());
  if (X509_sign(cert.get(), key, EVP_sha256()) <= 0)
    return fail("self-signing failed: " + x509::opensslError());
  return cert;
}

}  // namespace

Result<std::unique_ptr<Authority>> Authority::fromFiles(const std::string& anchor_path,
                                                        const std::string& cert_path,
                                                        const std::string& key_path,
                                                        const std::string& td) {
  CaMaterial m;
  for (auto [path, out] :
       {std::pair{&anchor_path, &m.trust_anchor_pem}, std::pair{&cert_path, &m.ca_cert_pem},
        std::pair{&key_path, &m.ca_key_pem}}) {
    auto text = readFile(*path);
    if (!text) return tl::unexpected(text.error());
    *out = std::move(*text);
  }
  return fromPem(m, td,
                 fmt::format("--trust-anchor {}, --ca-cert {}, --ca-key {}", anchor_path, cert_path,
                             key_path));
}

Result<std::unique_ptr<Authority>> Authority::fromPem(const CaMaterial& m, const std::string& td,
                                                      const std::string& origin) {
  std::unique_ptr<Authority> a(new Authority());
  a->trust_domain_ = td;
  if (auto parsed = x509::parseChain(m.trust_anchor_pem); !parsed)
    return fail(fmt::format("the trust anchor ({}): {}", origin, parsed.error().describe()));
  a->anchor_pem_ = m.trust_anchor_pem;
  auto issuer = x509::parseCert(m.ca_cert_pem);
  if (!issuer)
    return fail(
        fmt::format("the issuing CA certificate ({}): {}", origin, issuer.error().describe()));
  auto key = x509::parsePrivateKey(m.ca_key_pem);
  if (!key) return fail(fmt::format("the issuing CA key ({}): {}", origin, key.error().describe()));
  if (X509_check_private_key(issuer->get(), key->get()) != 1)
    return fail(fmt::format("the issuing CA key does not match its certificate ({}): {}", origin,
                            x509::opensslError()));
  if (X509_check_ca(issuer->get()) == 0)
    return fail(fmt::format("the issuing CA certificate is not a CA certificate ({})", origin));
  a->issuer_ = std::move(*issuer);
  a->issuer_key_ = std::move(*key);
  // The issuer must chain to the anchor.
  auto anchors = x509::parseChain(a->anchor_pem_);
  std::unique_ptr<X509_STORE, decltype(&X509_STORE_free)> store(X509_STORE_new(), X509_STORE_free);
  for (auto& c : *anchors) X509_STORE_add_cert(store.get(), c.get());
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> ctx(X509_STORE_CTX_new(),
                                                                      X509_STORE_CTX_free);
  X509_STORE_CTX_init(ctx.get(), store.get(), a->issuer_.get(), nullptr);
  if (X509_verify_cert(ctx.get()) != 1)
    return fail(fmt::format("the issuing CA does not chain to the trust anchor ({}): {}", origin,
                            X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx.get()))));
  return a;
}

Result<CaMaterial> Authority::generateSelfSigned() {
  auto root_key = x509::generateP256();
  if (!root_key) return tl::unexpected(root_key.error());
  auto root = selfSigned(root_key->get(), "sluice self-signed trust anchor", 3650);
  if (!root) return tl::unexpected(root.error());
  // The issuing CA is signed by the root; the root's key is not kept.
  std::unique_ptr<Authority> rootca(new Authority());
  rootca->issuer_ = std::move(*root);
  rootca->issuer_key_ = std::move(*root_key);
  auto issuing_key = x509::generateP256();
  if (!issuing_key) return tl::unexpected(issuing_key.error());
  auto issuing = rootca->issue(issuing_key->get(), {}, std::chrono::hours(24 * 365 * 5), true);
  if (!issuing) return tl::unexpected(issuing.error());
  return CaMaterial{x509::certPem(rootca->issuer_.get()), x509::certPem(issuing->get()),
                    x509::privateKeyPem(issuing_key->get())};
}

Result<std::unique_ptr<Authority>> Authority::development(const std::string& dir,
                                                          const std::string& td, bool* created) {
  namespace fs = std::filesystem;
  std::string anchor = dir + "/trust-anchor.pem", cert = dir + "/ca.pem", key = dir + "/ca-key.pem";
  *created = false;
  if (!fs::exists(anchor) || !fs::exists(cert) || !fs::exists(key)) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) return fail("cannot create the development CA directory " + dir + ": " + ec.message());
    ::chmod(dir.c_str(), 0700);
    auto m = generateSelfSigned();
    if (!m) return tl::unexpected(m.error());
    if (auto r = writeFile(anchor, m->trust_anchor_pem, 0644); !r) return tl::unexpected(r.error());
    if (auto r = writeFile(key, m->ca_key_pem, 0600); !r) return tl::unexpected(r.error());
    if (auto r = writeFile(cert, m->ca_cert_pem, 0644); !r) return tl::unexpected(r.error());
    *created = true;
  }
  return fromFiles(anchor, cert, key, td);
}

Result<x509::Cert> Authority::issue(EVP_PKEY* subject_key, const std::vector<std::string>& sans,
                                    std::chrono::seconds ttl, bool is_ca) const {
  x509::Cert cert(X509_new());
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  RAND_bytes(serial, sizeof(serial));
  serial[0] &= 0x7f;  // positive
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(issuer_.get()));
  if (is_ca) {
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("sluice"), -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("sluice issuing CA"), -1, -1,
                               0);
  }
  // Backdate a minute for clock skew between nodes; never outlive the issuer.
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(ttl.count()));
  if (ASN1_TIME_compare(X509_get0_notAfter(cert.get()), X509_get0_notAfter(issuer_.get())) > 0)
    X509_set1_notAfter(cert.get(), X509_get0_notAfter(issuer_.get()));
  X509_set_pubkey(cert.get(), subject_key);
  bool ok = true;
  if (is_ca) {
    ok = addExt(cert.get(), issuer_.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
         addExt(cert.get(), issuer_.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
  } else {
    std::string san;
    for (const auto& s : sans) san += (san.empty() ? "" : ",") + s;
    // An empty subject makes the SAN critical (RFC 5280 4.2.1.6).
    ok = addExt(cert.get(), issuer_.get(), NID_basic_constraints, "critical,CA:FALSE") &&
         addExt(cert.get(), issuer_.get(), NID_key_usage,
                "critical,digitalSignature,keyAgreement") &&
         addExt(cert.get(), issuer_.get(), NID_ext_key_usage, "serverAuth,clientAuth") &&
         addExt(cert.get(), issuer_.get(), NID_subject_alt_name, "critical," + san);
  }
  ok = ok && addExt(cert.get(), issuer_.get(), NID_subject_key_identifier, "hash") &&
       addExt(cert.get(), issuer_.get(), NID_authority_key_identifier, "keyid:always");
  if (!ok) return fail("building the certificate failed: " + x509::opensslError());
  if (X509_sign(cert.get(), issuer_key_.get(), EVP_sha256()) <= 0)
    return fail("signing failed: " + x509::opensslError());
  return cert;
}

Result<Signed> Authority::sign(const std::string& csr_pem, std::chrono::seconds ttl) const {
  if (ttl < kMinLeafTtl) return fail("certificate lifetime below one minute");
  auto csr = x509::inspectCsr(csr_pem);
  if (!csr) return tl::unexpected(csr.error());
  auto id = x509::SpiffeId::parse(csr->uri);
  if (!id)
    return fail("'" + csr->uri + "' is not a spiffe://<trust-domain>/ns/<ns>/sa/<sa> identity");
  if (id->trust_domain != trust_domain_)
    return fail("identity " + csr->uri + " is not in trust domain " + trust_domain_);
  auto leaf = issue(csr->public_key.get(), {"URI:" + csr->uri}, ttl, false);
  if (!leaf) return tl::unexpected(leaf.error());
  Signed s;
  s.identity = csr->uri;
  s.serial = x509::serialHex(leaf->get());
  s.not_after = x509::notAfter(leaf->get());
  s.chain_pem = x509::certPem(leaf->get()) + x509::certPem(issuer_.get());
  return s;
}

Result<std::pair<std::string, std::string>> Authority::issueServing(
    const std::vector<std::string>& ip_sans, std::chrono::seconds ttl,
    const std::vector<std::string>& dns_sans) const {
  auto key = x509::generateP256();
  if (!key) return tl::unexpected(key.error());
  std::vector<std::string> sans = {"URI:spiffe://" + trust_domain_ +
                                   "/ns/sluice-system/sa/sluice-controlplane"};
  for (const auto& ip : ip_sans) sans.push_back("IP:" + ip);
  for (const auto& dns : dns_sans) sans.push_back("DNS:" + dns);
  auto cert = issue(key->get(), sans, ttl, false);
  if (!cert) return tl::unexpected(cert.error());
  return std::make_pair(x509::privateKeyPem(key->get()),
                        x509::certPem(cert->get()) + x509::certPem(issuer_.get()));
}

}  // namespace sluice::controlplane::ca
