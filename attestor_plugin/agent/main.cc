// hwid-nodeattestor-agent: SPIRE agent NodeAttestor plugin "hwid_tpm" (plugin_cmd).
#include "attestor_plugin/agent/agent_plugin.h"
#include "attestor_plugin/pluginmain/pluginmain.h"

int main() {
  hwid::attestor::AgentNodeAttestor attestor;
  hwid::pluginmain::PluginOptions opts;
  opts.name = "hwid_tpm";
  opts.plugin_service_names = {"spire.plugin.agent.nodeattestor.v1.NodeAttestor"};
  return hwid::pluginmain::ServePlugin(opts, {&attestor}, &attestor.config());
}
