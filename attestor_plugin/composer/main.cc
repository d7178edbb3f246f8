// hwid-credentialcomposer: SPIRE server CredentialComposer plugin "hwid_tpm" (plugin_cmd): agent
// SVIDs of hwid_tpm agents only for keys their TPM certified. See docs/agent-key-binding.md.
#include "attestor_plugin/composer/composer.h"

int main() {
  hwid::composer::CredentialComposer composer;
  hwid::pluginmain::PluginOptions opts;
  opts.name = "hwid_tpm";
  opts.magic_cookie_key = "CredentialComposer";
  opts.magic_cookie_value = "CredentialComposer";
  opts.plugin_service_names = {"spire.plugin.server.credentialcomposer.v1.CredentialComposer"};
  return hwid::pluginmain::ServePlugin(opts, {&composer}, &composer.config());
}
