#include "tests/testing/postgres.h"

#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "tests/testing/run_shell.h"

namespace hwid::testing {
namespace {

// FreePort: a loopback TCP port that was free a moment ago (the bind race is retried by Start).
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    return -1;
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = -1;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  close(fd);
  return port;
}

std::string Quote(const std::string& s) { return "'" + s + "'"; }

}  // namespace

Postgres::Postgres(std::string dir, std::string bin, bool as_postgres_user)
    : dir_(std::move(dir)), bin_(std::move(bin)), as_postgres_user_(as_postgres_user) {}

std::string Postgres::As(const std::string& cmd) const {
  return as_postgres_user_ ? "runuser -u postgres -- " + cmd : cmd;
}

absl::StatusOr<std::unique_ptr<Postgres>> Postgres::Start() {
  const char* env_bin = std::getenv("HWID_PG_BIN");
  const std::string bin = env_bin != nullptr ? env_bin : "/usr/lib/postgresql/15/bin";
  for (const char* tool : {"initdb", "pg_ctl", "postgres", "psql"}) {
    if (access((bin + "/" + tool).c_str(), X_OK) != 0) {
      return absl::FailedPreconditionError(
          absl::StrCat(bin, "/", tool, " is missing (install postgresql-15)"));
    }
  }
  const bool root = geteuid() == 0;
  passwd* pg = nullptr;
  if (root && (pg = getpwnam("postgres")) == nullptr) {
    return absl::FailedPreconditionError(
        "running as root but there is no postgres user to run PostgreSQL as (install "
        "postgresql-15, which creates it)");
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / "hwid-pg-XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    return absl::InternalError("mkdtemp for the PostgreSQL directory failed");
  }
  std::unique_ptr<Postgres> p(new Postgres(tmpl, bin, root));
  if (root && chown(p->dir_.c_str(), pg->pw_uid, pg->pw_gid) != 0) {
    return absl::InternalError("chown of the PostgreSQL directory to postgres failed");
  }
  std::random_device rd;
  for (int i = 0; i < 4; ++i) {
    absl::StrAppend(&p->password_, absl::Hex(rd(), absl::kZeroPad8));
  }
  ShellResult init = RunShell(p->As(absl::StrCat(
      bin, "/initdb -D ", p->dir_, "/data -U postgres --auth-local=trust "
      "--auth-host=scram-sha-256 -E UTF8 --no-sync")));
  if (init.exit_code != 0) {
    return absl::UnavailableError(absl::StrCat("initdb failed: ", init.output));
  }
  absl::Status started = absl::UnavailableError("no attempt");
  for (int attempt = 0; attempt < 3 && !started.ok(); ++attempt) {
    p->port_ = FreePort();
    started = p->Resume();
  }
  if (!started.ok()) {
    return started;
  }
  for (const std::string& sql :
       {absl::StrCat("CREATE ROLE hwid LOGIN PASSWORD ", Quote(p->password_)),
        std::string("CREATE DATABASE hwid OWNER hwid")}) {
    absl::StatusOr<std::string> done = p->Psql(sql, "postgres");
    if (!done.ok()) {
      return done.status();
    }
  }
  return p;
}

absl::Status Postgres::Resume() {
  ShellResult r = RunShell(As(absl::StrCat(
      bin_, "/pg_ctl -D ", dir_, "/data -l ", dir_, "/postgres.log -w -t 30 -o \"-p ", port_,
      " -k ", dir_, " -c listen_addresses=127.0.0.1 -c fsync=off\" start")));
  if (r.exit_code != 0) {
    ShellResult log = RunShell("tail -n 20 " + dir_ + "/postgres.log");
    return absl::UnavailableError(
        absl::StrCat("pg_ctl start failed: ", r.output, "; log: ", log.output));
  }
  running_ = true;
  return absl::OkStatus();
}

absl::Status Postgres::Stop() {
  if (!running_) {
    return absl::OkStatus();
  }
  ShellResult r =
      RunShell(As(absl::StrCat(bin_, "/pg_ctl -D ", dir_, "/data -m fast -w -t 30 stop")));
  if (r.exit_code != 0) {
    return absl::InternalError(absl::StrCat("pg_ctl stop failed: ", r.output));
  }
  running_ = false;
  return absl::OkStatus();
}

Postgres::~Postgres() {
  (void)Stop();
  if (std::getenv("HWID_PG_KEEP_DIR") == nullptr) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
}

std::string Postgres::conninfo() const {
  return absl::StrCat("host=127.0.0.1 port=", port_, " dbname=hwid user=hwid password=",
                      password_);
}

std::string Postgres::superuser_conninfo(const std::string& dbname) const {
  return absl::StrCat("host=", dir_, " port=", port_, " dbname=", dbname, " user=postgres");
}

absl::StatusOr<std::string> Postgres::Psql(const std::string& sql,
                                           const std::string& dbname) const {
  ShellResult r = RunShell(absl::StrCat(bin_, "/psql -X -A -t -v ON_ERROR_STOP=1 \"",
                                        superuser_conninfo(dbname), "\" -c \"", sql, "\""));
  if (r.exit_code != 0) {
    return absl::InternalError(absl::StrCat("psql failed: ", r.output));
  }
  return r.output;
}

}  // namespace hwid::testing
