// The policy model on the control plane's wire (controlplane/api/sluice.proto
// PolicySet): one conversion each way, used by the control plane (model ->
// proto) and the agent (proto -> compiled PolicySet, and its persisted view).
#pragma once

#include <memory>
#include <span>

#include "common/policy/model.h"
#include "common/policy/policy_set.h"
#include "sluice.pb.h"
#include "sluice/common/result.h"

namespace sluice::policy {

void toProto(const AuthorizationPolicy& in, api::v1::AuthorizationPolicy* out);
void toProto(const PeerAuthentication& in, api::v1::PeerAuthentication* out);
api::v1::PolicySet toProto(std::span<const AuthorizationPolicy> authorization,
                           std::span<const PeerAuthentication> peer);

// Fails, naming the object, on an action or mode this build does not know
// (a newer control plane): the caller keeps its last good set.
Result<AuthorizationPolicy> fromProto(const api::v1::AuthorizationPolicy& in);
Result<PeerAuthentication> fromProto(const api::v1::PeerAuthentication& in);

// fromProto for every object, then PolicySet::build (which checks values).
Result<std::shared_ptr<const PolicySet>> buildFromProto(const api::v1::PolicySet& in,
                                                        PolicySet::Options options);

}  // namespace sluice::policy
