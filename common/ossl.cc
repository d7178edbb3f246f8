#include "common/ossl.h"

#include <openssl/err.h>

#include "absl/strings/string_view.h"
#include "absl/strings/str_cat.h"

namespace hwid {

std::string DrainOpenSslErrors() {
  std::string out;
  const char* file = nullptr;
  int line = 0;
  const char* data = nullptr;
  int flags = 0;
  unsigned long err;
  while ((err = ERR_get_error_all(&file, &line, nullptr, &data, &flags)) != 0) {
    char buf[256];
    ERR_error_string_n(err, buf, sizeof(buf));
    if (!out.empty()) {
      out += "; ";
    }
    out += buf;
    if (data != nullptr && (flags & ERR_TXT_STRING) != 0 && data[0] != '\0') {
      absl::StrAppend(&out, " (", data, ")");
    }
  }
  return out;
}

absl::Status OpenSslError(absl::string_view what, absl::StatusCode code) {
  std::string errors = DrainOpenSslErrors();
  if (errors.empty()) {
    return absl::Status(code, what);
  }
  return absl::Status(code, absl::StrCat(what, ": ", errors));
}

}  // namespace hwid
