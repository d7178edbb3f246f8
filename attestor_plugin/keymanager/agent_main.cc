// hwid-keymanager-agent: SPIRE agent KeyManager plugin (plugin_cmd): the agent's SVID keys in a
// TPM or on a PKCS#11 token. See docs/keymanager.md.
#include "attestor_plugin/keymanager/service.h"

int main() { return hwid::keymanager::RunKeyManagerPlugin<hwid::keymanager::AgentProtos>("agent"); }
