#include "controlplane/model/objects.h"

#include "controlplane/model/opaque_ports.h"
#include "controlplane/model/policies.h"
#include "sluice/common/addr.h"
#include "sluice/common/fmt.h"
#include "sluice/common/log.h"

namespace sluice::controlplane::model {

using json = nlohmann::json;

namespace {

// A field that must be a string when present.
Result<std::string> str(const json& parent, const char* key, bool required,
                        const std::string& ctx) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) {
    if (required) return fail(fmt::format("{}: '{}' is required", ctx, key));
    return std::string();
  }
  if (!it->is_string()) return fail(fmt::format("{}: '{}' must be a string", ctx, key));
  return it->get<std::string>();
}

Result<const json*> obj(const json& parent, const char* key, const std::string& ctx) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) return nullptr;
  if (!it->is_object()) return fail(fmt::format("{}: '{}' must be a mapping", ctx, key));
  return &*it;
}

Result<const json*> list(const json& parent, const char* key, const std::string& ctx) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) return nullptr;
  if (!it->is_array()) return fail(fmt::format("{}: '{}' must be a list", ctx, key));
  return &*it;
}

Result<std::map<std::string, std::string>> stringMap(const json& parent, const char* key,
                                                     const std::string& ctx) {
  std::map<std::string, std::string> out;
  auto m = obj(parent, key, ctx);
  if (!m) return fail(fmt::format("{}: '{}' must be a map of strings", ctx, key));
  if (!*m) return out;
  for (const auto& [k, v] : (*m)->items()) {
    if (!v.is_string()) return fail(fmt::format("{}: '{}' must be a map of strings", ctx, key));
    out[k] = v.get<std::string>();
  }
  return out;
}

Result<uint32_t> port(const json& parent, const char* key, bool required, const std::string& ctx) {
  auto it = parent.find(key);
  if (it == parent.end() || it->is_null()) {
    if (required) return fail(fmt::format("{}: '{}' is required", ctx, key));
    return 0u;
  }
  if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > 65535)
    return fail(fmt::format("{}: '{}' must be a port number (1-65535)", ctx, key));
  return static_cast<uint32_t>(it->get<int64_t>());
}

Result<void> checkIp(const std::string& ip, const std::string& ctx) {
  if (!parseIp4(ip) && ip.find(':') == std::string::npos)
    return fail(fmt::format("{}: '{}' is not an IP address", ctx, ip));
  return {};
}

// metadata.annotations["sluice.dev/opaque-ports"]: a bad value (or bad
// annotations) is a warning in the log and the annotation is ignored — the
// object itself is still accepted, as a typo must not take a pod off the
// mesh.
std::vector<PortRange> opaquePortsOf(const json& meta, const std::string& ctx) {
  auto annotations = meta.find("annotations");
  if (annotations == meta.end() || !annotations->is_object()) return {};
  auto value = annotations->find(kOpaquePortsAnnotation);
  if (value == annotations->end() || value->is_null()) return {};
  // Local YAML may leave one port unquoted (`sluice.dev/opaque-ports: 3306`).
  if (value->is_number_integer())
    return opaquePortsOf(
        json{{"annotations", {{kOpaquePortsAnnotation, std::to_string(value->get<int64_t>())}}}},
        ctx);
  if (!value->is_string()) {
    log::get("controlplane")
        ->warn("{}: annotation {} must be a string such as \"3306,5000-5010\"; ignored", ctx,
               kOpaquePortsAnnotation);
    return {};
  }
  auto ports = parseOpaquePorts(value->get<std::string>());
  if (!ports) {
    log::get("controlplane")
        ->warn("{}: annotation {}: {}; the annotation is ignored", ctx, kOpaquePortsAnnotation,
               ports.error().describe());
    return {};
  }
  return std::move(*ports);
}

#define TRY_ASSIGN(var, expr)                           \
  auto var##_r = (expr);                                \
  if (!var##_r) return tl::unexpected(var##_r.error()); \
  auto var = std::move(*var##_r)

// metadata.ownerReferences: the controller (controller: true), as Istio
// reads it; other owners (garbage-collection only) name no workload.
Result<void> parseOwner(const json& meta, Pod& pod, const std::string& ctx) {
  TRY_ASSIGN(refs, list(meta, "ownerReferences", ctx + " metadata"));
  if (!refs) return {};
  for (const auto& ref : *refs) {
    if (!ref.is_object()) return fail(ctx + ": metadata.ownerReferences entries must be mappings");
    auto controller = ref.find("controller");
    if (controller == ref.end() || !controller->is_boolean() || !controller->get<bool>()) continue;
    TRY_ASSIGN(kind, str(ref, "kind", true, ctx + " metadata.ownerReferences[]"));
    TRY_ASSIGN(name, str(ref, "name", true, ctx + " metadata.ownerReferences[]"));
    pod.owner_kind = kind;
    pod.owner_name = name;
    return {};
  }
  return {};
}

Result<void> parsePod(const json& doc, const json& meta, Pod& pod, const std::string& ctx) {
  TRY_ASSIGN(ns, str(meta, "namespace", true, ctx + " metadata"));
  pod.ns = ns;
  TRY_ASSIGN(uid, str(meta, "uid", false, ctx + " metadata"));
  pod.uid = uid.empty() ? pod.ns + "/" + pod.name : uid;
  TRY_ASSIGN(generate_name, str(meta, "generateName", false, ctx + " metadata"));
  pod.generate_name = generate_name;
  pod.opaque_ports = opaquePortsOf(meta, ctx);
  auto owner = parseOwner(meta, pod, ctx);
  if (!owner) return owner;
  bool terminating = meta.contains("deletionTimestamp") && !meta["deletionTimestamp"].is_null();
  TRY_ASSIGN(spec, obj(doc, "spec", ctx));
  if (spec) {
    TRY_ASSIGN(node, str(*spec, "nodeName", false, ctx + " spec"));
    pod.node = node;
    if (auto it = spec->find("hostNetwork"); it != spec->end() && !it->is_null()) {
      if (!it->is_boolean()) return fail(ctx + ": spec.hostNetwork must be true or false");
      pod.host_network = it->get<bool>();
    }
    TRY_ASSIGN(sa, str(*spec, "serviceAccountName", false, ctx + " spec"));
    if (!sa.empty()) pod.service_account = sa;
    TRY_ASSIGN(containers, list(*spec, "containers", ctx + " spec"));
    if (containers) {
      for (const auto& c : *containers) {
        if (!c.is_object()) return fail(ctx + ": spec.containers entries must be mappings");
        TRY_ASSIGN(ports, list(c, "ports", ctx + " spec.containers[]"));
        if (!ports) continue;
        for (const auto& p : *ports) {
          if (!p.is_object()) return fail(ctx + ": containers[].ports entries must be mappings");
          TRY_ASSIGN(name, str(p, "name", false, ctx + " containers[].ports[]"));
          TRY_ASSIGN(number, port(p, "containerPort", true, ctx + " containers[].ports[]"));
          if (!name.empty()) pod.named_ports[name] = number;
        }
      }
    }
  }
  pod.ready = !terminating;
  TRY_ASSIGN(status, obj(doc, "status", ctx));
  if (status) {
    TRY_ASSIGN(ip, str(*status, "podIP", false, ctx + " status"));
    if (!ip.empty()) pod.ips.push_back(ip);
    TRY_ASSIGN(ips, list(*status, "podIPs", ctx + " status"));
    if (ips) {
      for (const auto& e : *ips) {
        if (!e.is_object()) return fail(ctx + ": status.podIPs entries must be {ip: ...}");
        TRY_ASSIGN(v, str(e, "ip", true, ctx + " status.podIPs[]"));
        if (std::find(pod.ips.begin(), pod.ips.end(), v) == pod.ips.end()) pod.ips.push_back(v);
      }
    }
    for (const auto& a : pod.ips) {
      auto ok = checkIp(a, ctx);
      if (!ok) return ok;
    }
    TRY_ASSIGN(phase, str(*status, "phase", false, ctx + " status"));
    if (phase == "Pending" || phase == "Succeeded" || phase == "Failed") pod.ready = false;
    // A finished pod (a Job's) keeps status.podIP, but its sandbox is gone
    // and the address may already be another pod's: it names nothing.
    if (phase == "Succeeded" || phase == "Failed") pod.ips.clear();
    TRY_ASSIGN(conditions, list(*status, "conditions", ctx + " status"));
    if (conditions) {
      bool ready_true = false;
      for (const auto& c : *conditions) {
        if (!c.is_object()) return fail(ctx + ": status.conditions entries must be mappings");
        TRY_ASSIGN(type, str(c, "type", true, ctx + " status.conditions[]"));
        TRY_ASSIGN(value, str(c, "status", true, ctx + " status.conditions[]"));
        if (type == "Ready") ready_true = value == "True";
      }
      // With conditions present, only Ready=True counts (the endpoints
      // controller's rule); without any, local mode trusts the phase.
      if (!ready_true) pod.ready = false;
    }
  }
  return {};
}

Result<void> parseService(const json& doc, const json& meta, Service& svc, const std::string& ctx) {
  TRY_ASSIGN(ns, str(meta, "namespace", true, ctx + " metadata"));
  svc.ns = ns;
  svc.opaque_ports = opaquePortsOf(meta, ctx);
  TRY_ASSIGN(spec, obj(doc, "spec", ctx));
  if (!spec) return fail(ctx + ": 'spec' is required");
  TRY_ASSIGN(type, str(*spec, "type", false, ctx + " spec"));
  if (type == "ExternalName") return {};  // no VIP, nothing to balance
  TRY_ASSIGN(cluster_ip, str(*spec, "clusterIP", false, ctx + " spec"));
  svc.headless = cluster_ip == "None";
  if (!cluster_ip.empty() && !svc.headless) svc.vips.push_back(cluster_ip);
  TRY_ASSIGN(cluster_ips, list(*spec, "clusterIPs", ctx + " spec"));
  if (cluster_ips)
    for (const auto& v : *cluster_ips) {
      if (!v.is_string()) return fail(ctx + ": spec.clusterIPs entries must be strings");
      auto ip = v.get<std::string>();
      if (ip != "None" && std::find(svc.vips.begin(), svc.vips.end(), ip) == svc.vips.end())
        svc.vips.push_back(ip);
    }
  for (const auto& ip : svc.vips) {
    auto ok = checkIp(ip, ctx + " spec.clusterIP");
    if (!ok) return ok;
  }
  TRY_ASSIGN(selector, stringMap(*spec, "selector", ctx + " spec"));
  svc.has_selector = spec->contains("selector") && !(*spec)["selector"].is_null();
  svc.selector = selector;
  TRY_ASSIGN(ports, list(*spec, "ports", ctx + " spec"));
  if (ports) {
    for (const auto& p : *ports) {
      std::string pctx = ctx + " spec.ports[]";
      if (!p.is_object()) return fail(pctx + ": entries must be mappings");
      ServicePort sp;
      TRY_ASSIGN(name, str(p, "name", false, pctx));
      sp.name = name;
      TRY_ASSIGN(number, port(p, "port", true, pctx));
      sp.port = number;
      TRY_ASSIGN(protocol, str(p, "protocol", false, pctx));
      if (!protocol.empty()) sp.protocol = protocol;
      TRY_ASSIGN(app_protocol, str(p, "appProtocol", false, pctx));
      sp.app_protocol = app_protocol;
      auto tp = p.find("targetPort");
      if (tp != p.end() && !tp->is_null()) {
        if (tp->is_string()) {
          sp.target_port_name = tp->get<std::string>();
        } else {
          TRY_ASSIGN(target, port(p, "targetPort", true, pctx));
          sp.target_port = target;
        }
      }
      svc.ports.push_back(std::move(sp));
    }
  }
  if (svc.ports.size() > 1)
    for (const auto& p : svc.ports)
      if (p.name.empty()) return fail(ctx + ": every port needs a name when there are several");
  // As the API server checks them: no port (with its protocol) nor name twice.
  for (size_t i = 0; i < svc.ports.size(); ++i)
    for (size_t j = 0; j < i; ++j) {
      const auto &a = svc.ports[i], &b = svc.ports[j];
      if (a.port == b.port && a.protocol == b.protocol)
        return fail(fmt::format("{}: spec.ports has port {}/{} twice; give each entry its own port",
                                ctx, a.port, a.protocol));
      if (a.name == b.name)
        return fail(fmt::format("{}: spec.ports has the name '{}' twice", ctx, a.name));
    }
  return {};
}

Result<void> parseSlice(const json& doc, const json& meta,
                        const std::map<std::string, std::string>& labels, EndpointSlice& es,
                        const std::string& ctx) {
  TRY_ASSIGN(ns, str(meta, "namespace", true, ctx + " metadata"));
  es.ns = ns;
  auto svc = labels.find("kubernetes.io/service-name");
  if (svc != labels.end()) es.service = svc->second;
  TRY_ASSIGN(type, str(doc, "addressType", false, ctx));
  // FQDN slices name no address to balance over (deprecated in Kubernetes).
  if (!type.empty() && type != "IPv4" && type != "IPv6") return {};
  const bool v6 = type == "IPv6";
  TRY_ASSIGN(ports, list(doc, "ports", ctx));
  if (ports)
    for (const auto& p : *ports) {
      if (!p.is_object()) return fail(ctx + ": ports entries must be mappings");
      TRY_ASSIGN(name, str(p, "name", false, ctx + " ports[]"));
      TRY_ASSIGN(number, port(p, "port", false, ctx + " ports[]"));
      TRY_ASSIGN(protocol, str(p, "protocol", false, ctx + " ports[]"));
      if (number && (protocol.empty() || protocol == "TCP")) es.ports.emplace_back(name, number);
    }
  TRY_ASSIGN(endpoints, list(doc, "endpoints", ctx));
  if (endpoints)
    for (const auto& e : *endpoints) {
      std::string ectx = ctx + " endpoints[]";
      if (!e.is_object()) return fail(ectx + ": entries must be mappings");
      EndpointSlice::Endpoint ep;
      TRY_ASSIGN(addresses, list(e, "addresses", ectx));
      if (!addresses) return fail(ectx + ": 'addresses' is required");
      for (const auto& a : *addresses) {
        if (!a.is_string()) return fail(ectx + ": addresses must be strings");
        auto ok = checkIp(a.get<std::string>(), ectx);
        if (!ok) return ok;
        if (auto ip = IpAddr::parse(a.get<std::string>());
            !type.empty() && (!ip || ip->isV6() != v6))
          return fail(ectx + ": address " + a.get<std::string>() + " is not of addressType " +
                      type);
        ep.addresses.push_back(a.get<std::string>());
      }
      TRY_ASSIGN(conditions, obj(e, "conditions", ectx));
      if (conditions) {
        // Unset (or null) keeps the API's default.
        auto flag = [&](const char* name, bool& into) -> Result<bool> {
          auto r = conditions->find(name);
          if (r == conditions->end() || r->is_null()) return false;
          if (!r->is_boolean()) return fail(ectx + ": conditions." + name + " must be a boolean");
          into = r->get<bool>();
          return true;
        };
        TRY_ASSIGN(has_ready, flag("ready", ep.ready));
        TRY_ASSIGN(has_serving, flag("serving", ep.serving));
        if (!has_serving) ep.serving = ep.ready;
        TRY_ASSIGN(has_terminating, flag("terminating", ep.terminating));
        (void)has_ready;
        (void)has_terminating;
      }
      TRY_ASSIGN(target, obj(e, "targetRef", ectx));
      if (target) {
        TRY_ASSIGN(kind, str(*target, "kind", false, ectx + " targetRef"));
        TRY_ASSIGN(uid, str(*target, "uid", false, ectx + " targetRef"));
        if (kind == "Pod") ep.target_uid = uid;
      }
      es.endpoints.push_back(std::move(ep));
    }
  return {};
}

}  // namespace

bool knownKind(const std::string& kind) {
  return kind == "Namespace" || kind == "Pod" || kind == "Service" || kind == "EndpointSlice" ||
         isPolicyKind(kind);
}

std::string objectKey(const nlohmann::json& o) {
  auto get = [](const json& j, const char* k) {
    auto it = j.find(k);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
  };
  std::string kind = get(o, "kind");
  const json& meta = o.contains("metadata") && o["metadata"].is_object() ? o["metadata"] : o;
  std::string ns = get(meta, "namespace"), name = get(meta, "name");
  if (kind == "Pod") {
    std::string uid = get(meta, "uid");
    return "Pod " + (uid.empty() ? ns + "/" + name : uid);
  }
  if (kind == "Namespace") return "Namespace " + name;
  return kind + " " + ns + "/" + name;
}

Result<void> addObject(const json& doc, Objects& into, const std::string& where) {
  if (!doc.is_object()) return fail(where + ": not a mapping");
  std::string ctx = where;
  TRY_ASSIGN(kind, str(doc, "kind", true, ctx));
  if (!knownKind(kind)) return {};
  if (isPolicyKind(kind)) return addPolicy(doc, into);  // its parser names object and field
  auto meta_it = doc.find("metadata");
  if (meta_it == doc.end() || !meta_it->is_object())
    return fail(fmt::format("{} ({}): 'metadata' must be a mapping", ctx, kind));
  const json& meta = *meta_it;
  TRY_ASSIGN(name, str(meta, "name", true, ctx + " metadata"));
  if (name.empty()) return fail(ctx + ": metadata.name is empty");
  ctx = fmt::format("{} ({} {})", ctx, kind, name);
  TRY_ASSIGN(labels, stringMap(meta, "labels", ctx + " metadata"));
  if (kind == "Namespace") {
    into.namespaces.push_back({name, labels});
    return {};
  }
  if (kind == "Pod") {
    Pod pod;
    pod.name = name;
    pod.labels = labels;
    auto ok = parsePod(doc, meta, pod, ctx);
    if (!ok) return ok;
    into.pods.push_back(std::move(pod));
    return {};
  }
  if (kind == "Service") {
    Service svc;
    svc.name = name;
    auto ok = parseService(doc, meta, svc, ctx);
    if (!ok) return ok;
    into.services.push_back(std::move(svc));
    return {};
  }
  EndpointSlice es;
  es.name = name;
  auto ok = parseSlice(doc, meta, labels, es, ctx);
  if (!ok) return ok;
  into.endpoint_slices.push_back(std::move(es));
  return {};
}

}  // namespace sluice::controlplane::model
