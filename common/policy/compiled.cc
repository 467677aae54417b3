#include "common/policy/compiled.h"

namespace sluice::policy {

namespace compiled {

// The exact principals one of which a compiled policy needs, or nullopt if it
// has no such key (then it is scanned). A policy without rules never
// matches: an empty key set.
std::optional<std::vector<std::string>> principalKeys(const CompiledPolicy& p) {
  std::vector<std::string> keys;
  for (const auto& r : p.rules) {
    const std::vector<std::string>* best = nullptr;
    std::vector<std::string> clause_keys;
    for (const auto& cl : r.all) {
      std::vector<std::string> k;
      bool keyed = !cl.any.empty();
      for (const auto& m : cl.any) {
        auto t = std::find_if(m.tests.begin(), m.tests.end(), [](const Test& t) {
          return t.field == Field::kPrincipal && !t.negate &&
                 std::all_of(t.strings.begin(), t.strings.end(), [](const StringMatch& s) {
                   return s.kind == StringMatch::Kind::kExact;
                 });
        });
        if (t == m.tests.end()) {
          keyed = false;
          break;
        }
        for (const auto& s : t->strings) k.push_back(s.value);
      }
      if (keyed && (!best || k.size() < best->size())) {
        clause_keys = std::move(k);
        best = &clause_keys;
      }
    }
    if (!best) return std::nullopt;  // this rule can match without a listed principal
    keys.insert(keys.end(), best->begin(), best->end());
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  return keys;
}

}  // namespace compiled

void PolicySet::Index::add(uint32_t id) {
  const CompiledPolicy& p = policies[id];
  const AuthorizationPolicy& m = *p.model;
  Bucket& b = namespaces[m.ns];
  Scoped* scoped = &b.namespace_wide;
  if (!m.selector.empty()) {
    auto& scopes =
        b.by_label[compiled::labelHash(m.selector.front().first, m.selector.front().second)];
    auto it = std::find_if(scopes.begin(), scopes.end(),
                           [&](const SelectorScope& s) { return *s.selector == m.selector; });
    if (it == scopes.end()) it = scopes.insert(scopes.end(), SelectorScope{&m.selector, {}});
    scoped = &it->policies;
  }
  Group& g = scoped->of(m.action);
  ++g.size;
  if (auto keys = compiled::principalKeys(p)) {
    for (auto& k : *keys) g.by_principal[std::move(k)].push_back(id);
  } else {
    g.scan.push_back(id);
  }
}

}  // namespace sluice::policy
