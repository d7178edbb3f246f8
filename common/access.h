// Explaining "permission denied" to an operator: which uid, which file, its owner, group and mode.
#ifndef HWID_COMMON_ACCESS_H_
#define HWID_COMMON_ACCESS_H_

#include <string>

namespace hwid {

// AccessProblem checks whether this process (its effective uid and groups) may access `path`
// with `mode` (access(2) bits: R_OK, W_OK, X_OK). "" when it may, or when the file does not
// exist (say that separately); otherwise "uid 65534 (nobody) may not <what> PATH (owner root,
// group tss, mode 0660)", `what` naming the access ("read and write").
std::string AccessProblem(const std::string& path, int mode, const std::string& what);

// FileGroupName is the name of `path`'s group ("" when it cannot be read).
std::string FileGroupName(const std::string& path);

}  // namespace hwid

#endif  // HWID_COMMON_ACCESS_H_
