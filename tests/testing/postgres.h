// A private PostgreSQL server for tests: initdb into a fresh mkdtemp directory, `pg_ctl start` on
// a free loopback port with its unix socket in that directory, `pg_ctl stop` (fast) in the
// destructor, then the directory is removed. Binaries from $HWID_PG_BIN or
// /usr/lib/postgresql/15/bin (Debian 12's postgresql-15). PostgreSQL refuses to run as root: when
// the test runs as root (CI containers) the directory is given to the `postgres` system user
// (Debian's package creates it) and initdb / pg_ctl run through `runuser -u postgres`.
//
// Authentication: trust on the unix socket; TCP on 127.0.0.1 with scram-sha-256 for the role
// `hwid` whose password is password() (so a test can check a password never shows up in a
// message or log).
#ifndef HWID_TESTS_TESTING_POSTGRES_H_
#define HWID_TESTS_TESTING_POSTGRES_H_

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace hwid::testing {

class Postgres {
 public:
  // Start: FAILED_PRECONDITION when the binaries (or, as root, the postgres user) are missing;
  // UNAVAILABLE when the server does not come up (the message carries the tail of its log).
  static absl::StatusOr<std::unique_ptr<Postgres>> Start();
  ~Postgres();
  Postgres(const Postgres&) = delete;
  Postgres& operator=(const Postgres&) = delete;

  // conninfo for the role hwid over TCP with its password (libpq key=value form).
  std::string conninfo() const;
  // superuser_conninfo: the bootstrap superuser over the unix socket (trust).
  std::string superuser_conninfo(const std::string& dbname = "hwid") const;
  const std::string& password() const { return password_; }
  int port() const { return port_; }
  const std::string& dir() const { return dir_; }

  // Stop (pg_ctl stop -m fast) and Resume (pg_ctl start again, same port and data).
  absl::Status Stop();
  absl::Status Resume();
  // Psql runs one SQL command as the superuser in `dbname` and returns its unaligned output.
  absl::StatusOr<std::string> Psql(const std::string& sql,
                                   const std::string& dbname = "hwid") const;

 private:
  Postgres(std::string dir, std::string bin, bool as_postgres_user);
  std::string As(const std::string& cmd) const;  // cmd, run as the postgres user when root
  std::string dir_;
  std::string bin_;
  bool as_postgres_user_;
  int port_ = 0;
  bool running_ = false;
  std::string password_;
};

}  // namespace hwid::testing

#endif  // HWID_TESTS_TESTING_POSTGRES_H_
