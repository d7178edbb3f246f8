// hwid-nodeattestor-server: SPIRE server NodeAttestor plugin "hwid_tpm" (plugin_cmd).
#include <cstdlib>

#include "attestor_plugin/pluginmain/pluginmain.h"
#include "attestor_plugin/server/server_plugin.h"

int main() {
  // tss2-mu reports malformed input on stderr; on the server that input is attacker-controlled.
  setenv("TSS2_LOG", "all+NONE", 0);
  hwid::attestor::ServerNodeAttestor attestor;
  hwid::pluginmain::PluginOptions opts;
  opts.name = "hwid_tpm";
  opts.plugin_service_names = {"spire.plugin.server.nodeattestor.v1.NodeAttestor"};
  return hwid::pluginmain::ServePlugin(opts, {&attestor}, &attestor.config());
}
