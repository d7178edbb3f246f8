// NewAgent: an attestation agent for tests, from the same configuration input SPIRE's
// plugin_data gives (validated like the plugin does); null after a gtest failure.
#ifndef HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_AGENT_TESTING_H_
#define HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_AGENT_TESTING_H_

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "attestor_plugin/attestation/agent.h"

namespace hwid::attestation::testing {

inline std::unique_ptr<AgentResponder> NewAgent(const std::string& tcti, const char* ek,
                                                const char* ak_alg = "ec-p256",
                                                const char* ak_handle = "0x81000100",
                                                const char* pcrs = "") {
  AgentConfigInput in;
  in.tcti = tcti;
  in.ek = ek;
  in.ak_alg = ak_alg;
  in.ak_handle = ak_handle;
  in.pcrs = pcrs;
  absl::StatusOr<AgentConfig> c = ValidateAgentConfig(in);
  EXPECT_TRUE(c.ok()) << c.status();
  if (!c.ok()) {
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<AgentResponder>> a = AgentResponder::New(*c);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? std::move(*a) : nullptr;
}

}  // namespace hwid::attestation::testing

#endif  // HWID_TESTS_ATTESTOR_PLUGIN_ATTESTATION_AGENT_TESTING_H_
