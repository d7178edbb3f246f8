// hwid-keymanager-server: SPIRE server KeyManager plugin (plugin_cmd): the server's X.509 CA and
// JWT signing keys in a TPM or on a PKCS#11 token. See docs/keymanager.md.
#include "attestor_plugin/keymanager/service.h"

int main() {
  return hwid::keymanager::RunKeyManagerPlugin<hwid::keymanager::ServerProtos>("server");
}
