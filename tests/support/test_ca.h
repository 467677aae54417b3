// An in-process CA for tests and fuzz targets: a P-256 root and workload
// certificates carrying a SPIFFE URI SAN, as the mesh CA issues them.
// Header-only; throws std::runtime_error when OpenSSL refuses something.
#pragma once

#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>
#include <string>

#include "sluice/common/x509.h"
#include "sluice/ztunnel/engine.h"

namespace sluice::test {

// What a malformed leaf gets wrong (an X.509-SVID has neither).
struct LeafFlaws {
  bool ca = false;         // basicConstraints CA:TRUE
  std::string second_uri;  // a second URI SAN
};

class TestCa {
 public:
  explicit TestCa(const char* name = "test CA", long validity_seconds = 86400)
      : days_(validity_seconds) {
    key_ = std::move(*x509::generateP256());
    cert_.reset(X509_new());
    X509_set_version(cert_.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert_.get()), serial_++);
    X509_NAME* subject = X509_get_subject_name(cert_.get());
    X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>(name), -1, -1, 0);
    X509_set_issuer_name(cert_.get(), subject);
    X509_gmtime_adj(X509_getm_notBefore(cert_.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(cert_.get()), days_);
    X509_set_pubkey(cert_.get(), key_.get());
    ext(cert_.get(), NID_basic_constraints, "critical,CA:TRUE");
    ext(cert_.get(), NID_key_usage, "critical,keyCertSign,cRLSign");
    ext(cert_.get(), NID_subject_key_identifier, "hash");
    if (X509_sign(cert_.get(), key_.get(), EVP_sha256()) <= 0) throw std::runtime_error("sign CA");
    pem_ = x509::certPem(cert_.get());
  }

  const std::string& pem() const { return pem_; }

  // A workload certificate for `uri` (leaf then this CA) and its key.
  std::shared_ptr<const ztunnel::WorkloadCredential> issue(const std::string& uri,
                                                           const LeafFlaws& flaws = {}) {
    auto k = std::move(*x509::generateP256());
    x509::Cert c(X509_new());
    X509_set_version(c.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), serial_++);
    X509_set_issuer_name(c.get(), X509_get_subject_name(cert_.get()));
    X509_gmtime_adj(X509_getm_notBefore(c.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(c.get()), days_);
    X509_set_pubkey(c.get(), k.get());
    std::string san = "critical,URI:" + uri;
    if (!flaws.second_uri.empty()) san += ",URI:" + flaws.second_uri;
    ext(c.get(), NID_basic_constraints, flaws.ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    ext(c.get(), NID_key_usage, "critical,digitalSignature");
    ext(c.get(), NID_ext_key_usage, "serverAuth,clientAuth");
    ext(c.get(), NID_subject_alt_name, san.c_str());
    ext(c.get(), NID_authority_key_identifier, "keyid:always");
    if (X509_sign(c.get(), key_.get(), EVP_sha256()) <= 0) throw std::runtime_error("sign leaf");
    auto cred = std::make_shared<ztunnel::WorkloadCredential>();
    cred->identity = uri;
    cred->chain_pem = x509::certPem(c.get()) + pem_;
    cred->key_pem = x509::privateKeyPem(k.get());
    return cred;
  }

 private:
  void ext(X509* cert, int nid, const char* value) {
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert_.get(), cert, nullptr, nullptr, 0);
    X509_EXTENSION* e = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    if (!e) throw std::runtime_error(std::string("certificate extension ") + value);
    X509_add_ext(cert, e, -1);
    X509_EXTENSION_free(e);
  }
  long days_;  // validity in seconds
  x509::PKey key_;
  x509::Cert cert_;
  std::string pem_;
  long serial_ = 1;
};

}  // namespace sluice::test
