#include "controlplane/ca/ca_secret.h"

#include <nlohmann/json.hpp>

#include "sluice/common/base64.h"
#include "sluice/common/fmt.h"
#include "sluice/common/json_text.h"

namespace sluice::controlplane::ca {
namespace {

using nlohmann::json;

constexpr const char* kAnchorKey = "root-cert.pem";
constexpr const char* kCertKey = "ca-cert.pem";
constexpr const char* kKeyKey = "ca-key.pem";

std::string apiError(const kube::Response& r) {
  auto j = json::parse(r.body, nullptr, false);
  std::string message = j.is_object() ? j.value("message", "") : "";
  return fmt::format("HTTP {}{}", r.status, message.empty() ? "" : ": " + message);
}

std::string secretPath(const ObjectRef& s) {
  return fmt::format("/api/v1/namespaces/{}/secrets", s.ns);
}
std::string configMapPath(const ObjectRef& c) {
  return fmt::format("/api/v1/namespaces/{}/configmaps", c.ns);
}

Result<CaMaterial> fromSecret(const json& secret, const ObjectRef& ref) {
  const json data = secret.value("data", json::object());
  CaMaterial m;
  for (auto [key, out] : {std::pair{kAnchorKey, &m.trust_anchor_pem},
                          std::pair{kCertKey, &m.ca_cert_pem}, std::pair{kKeyKey, &m.ca_key_pem}}) {
    if (!data.contains(key) || !data[key].is_string())
      return fail(fmt::format(
          "Secret {} has no {}: it must hold root-cert.pem, ca-cert.pem and ca-key.pem "
          "(tools/gen-ca.sh writes them; kubectl -n {} create secret generic {} --from-file=...), "
          "or delete it and the control plane generates a self-signed CA",
          ref.text(), key, ref.ns, ref.name));
    auto text = base64Decode(data[key].get<std::string>());
    if (!text) return fail(fmt::format("Secret {}: {} is not valid base64", ref.text(), key));
    *out = std::move(*text);
  }
  return m;
}

Result<std::optional<json>> getObject(const kube::Client& client, const std::string& collection,
                                      const ObjectRef& ref, const char* kind) {
  auto r = client.get(collection + "/" + ref.name);
  if (!r) return tl::unexpected(r.error());
  if (r->status == 404) return std::optional<json>();
  if (r->status != 200)
    return fail(
        fmt::format("cannot read {} {}: {} (the control plane's service account needs get on it: "
                    "deploy/rbac.yaml)",
                    kind, ref.text(), apiError(*r)));
  auto j = json::parse(r->body, nullptr, false);
  if (!j.is_object())
    return fail(fmt::format("{} {}: the API answered no JSON object", kind, ref.text()));
  return std::optional<json>(std::move(j));
}

json metadata(const ObjectRef& ref) {
  return {{"name", ref.name},
          {"namespace", ref.ns},
          {"labels", {{"app.kubernetes.io/part-of", "sluice"}}}};
}

}  // namespace

Result<ObjectRef> parseObjectRef(const std::string& text, const std::string& flag) {
  auto slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size() ||
      text.find('/', slash + 1) != std::string::npos)
    return fail(fmt::format("{} must be NAMESPACE/NAME, got '{}'", flag, text));
  return ObjectRef{text.substr(0, slash), text.substr(slash + 1)};
}

Result<StoredCa> loadOrCreateCa(const kube::Client& client, const ObjectRef& secret) {
  auto existing = getObject(client, secretPath(secret), secret, "Secret");
  if (!existing) return tl::unexpected(existing.error());
  if (*existing) {
    auto m = fromSecret(**existing, secret);
    if (!m) return tl::unexpected(m.error());
    return StoredCa{std::move(*m), false};
  }
  auto generated = Authority::generateSelfSigned();
  if (!generated) return tl::unexpected(generated.error());
  json meta = metadata(secret);
  meta["annotations"] = {{"sluice.dev/generated-by", "sluice-controlplane (self-signed)"}};
  json body = {{"apiVersion", "v1"},
               {"kind", "Secret"},
               {"metadata", meta},
               {"type", "Opaque"},
               {"data",
                {{kAnchorKey, base64Encode(generated->trust_anchor_pem)},
                 {kCertKey, base64Encode(generated->ca_cert_pem)},
                 {kKeyKey, base64Encode(generated->ca_key_pem)}}}};
  auto r = client.post(secretPath(secret), jsonText(body));
  if (!r) return tl::unexpected(r.error());
  if (r->status == 201 || r->status == 200) return StoredCa{std::move(*generated), true};
  if (r->status == 409) {
    // Another replica created it first: use theirs.
    auto theirs = getObject(client, secretPath(secret), secret, "Secret");
    if (!theirs) return tl::unexpected(theirs.error());
    if (!*theirs)
      return fail(fmt::format("Secret {} was reported to exist and then was not found; retry",
                              secret.text()));
    auto m = fromSecret(**theirs, secret);
    if (!m) return tl::unexpected(m.error());
    return StoredCa{std::move(*m), false};
  }
  return fail(fmt::format(
      "cannot create Secret {} for the generated CA: {} (the control plane's service account "
      "needs create on secrets in {}: deploy/rbac.yaml)",
      secret.text(), apiError(*r), secret.ns));
}

Result<bool> publishTrustAnchor(const kube::Client& client, const ObjectRef& configmap,
                                const std::string& anchor_pem) {
  auto existing = getObject(client, configMapPath(configmap), configmap, "ConfigMap");
  if (!existing) return tl::unexpected(existing.error());
  Result<kube::Response> r = fail("unset");
  if (!*existing) {
    json body = {{"apiVersion", "v1"},
                 {"kind", "ConfigMap"},
                 {"metadata", metadata(configmap)},
                 {"data", {{kAnchorKey, anchor_pem}}}};
    r = client.post(configMapPath(configmap), jsonText(body));
  } else {
    json body = std::move(**existing);
    const json data = body.value("data", json::object());
    if (data.contains(kAnchorKey) && data[kAnchorKey] == anchor_pem) return false;
    body["data"][kAnchorKey] = anchor_pem;  // metadata.resourceVersion guards a concurrent writer
    r = client.put(configMapPath(configmap) + "/" + configmap.name, jsonText(body));
  }
  if (!r) return tl::unexpected(r.error());
  if (r->status != 200 && r->status != 201)
    return fail(fmt::format(
        "cannot write ConfigMap {} with the trust anchor: {} (the control plane's service "
        "account needs create and update on it: deploy/rbac.yaml)",
        configmap.text(), apiError(*r)));
  return true;
}

}  // namespace sluice::controlplane::ca
