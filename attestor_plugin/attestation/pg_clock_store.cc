// PostgresClockStore (clock_state.h): the clock records of several servers in one PostgreSQL
// table; the compare-and-set is one conditional SQL statement, atomic in the database.
#include <libpq-fe.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "attestor_plugin/attestation/clock_state.h"
#include "common/bytes.h"

namespace hwid::attestation {
namespace {

constexpr size_t kMaxIdleConnections = 4;

// The table: one row per identity; `version` is the compare-and-set token.
constexpr char kCreateTable[] =
    "CREATE TABLE IF NOT EXISTS hwid_tpm_clock_state ("
    " identity text PRIMARY KEY,"
    " version bigint NOT NULL,"
    " ak_name text NOT NULL,"
    " clock numeric(20,0) NOT NULL,"
    " reset_count bigint NOT NULL,"
    " restart_count bigint NOT NULL,"
    " safe boolean NOT NULL,"
    " firmware_version numeric(20,0) NOT NULL,"
    " verified_at_ms bigint NOT NULL,"
    " updated_at timestamptz NOT NULL DEFAULT now())";

constexpr char kSelect[] =
    "SELECT version, ak_name, clock, reset_count, restart_count, safe, firmware_version,"
    " verified_at_ms FROM hwid_tpm_clock_state WHERE identity = $1";

// Insert only when no row exists (another server may have inserted first: 0 rows).
constexpr char kInsert[] =
    "INSERT INTO hwid_tpm_clock_state"
    " (identity, version, ak_name, clock, reset_count, restart_count, safe, firmware_version,"
    " verified_at_ms) VALUES ($1, 1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (identity) DO NOTHING";

// Update only the version this server read (another server may have moved it: 0 rows).
constexpr char kUpdate[] =
    "UPDATE hwid_tpm_clock_state SET version = version + 1, ak_name = $2, clock = $3,"
    " reset_count = $4, restart_count = $5, safe = $6, firmware_version = $7,"
    " verified_at_ms = $8, updated_at = now() WHERE identity = $1 AND version = $9";

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
struct PgResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using PgConn = std::unique_ptr<PGconn, PgConnDeleter>;
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;

// PgError: the server's message (no conninfo, no password), single line.
std::string PgError(PGconn* c) {
  std::string m = PQerrorMessage(c);
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) {
    m.pop_back();
  }
  for (char& ch : m) {
    if (ch == '\n') ch = ' ';
  }
  return m;
}

class PostgresClockStore final : public ClockStateStore {
 public:
  explicit PostgresClockStore(std::string conninfo) : conninfo_(std::move(conninfo)) {}
  ~PostgresClockStore() override {
    std::fill(conninfo_.begin(), conninfo_.end(), '\0');
  }

  absl::StatusOr<std::optional<StoredClockRecord>> Load(const std::string& identity) override {
    absl::StatusOr<PgConn> conn = Acquire();
    if (!conn.ok()) {
      return conn.status();
    }
    const char* params[] = {identity.c_str()};
    PgResult res(PQexecParams(conn->get(), kSelect, 1, nullptr, params, nullptr, nullptr, 0));
    if (PQresultStatus(res.get()) != PGRES_TUPLES_OK) {
      return Failed(std::move(*conn), "reading the clock record");
    }
    std::optional<StoredClockRecord> out;
    if (PQntuples(res.get()) == 1) {
      StoredClockRecord s;
      ClockRecord& r = s.record;
      int64_t reset = -1;
      int64_t restart = -1;
      const std::string safe = PQgetvalue(res.get(), 0, 5);
      if (!absl::SimpleAtoi(PQgetvalue(res.get(), 0, 0), &s.version) ||
          !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 2), &r.clock) ||
          !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 3), &reset) ||
          !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 4), &restart) ||
          !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 6), &r.firmware_version) ||
          !absl::SimpleAtoi(PQgetvalue(res.get(), 0, 7), &r.verified_at_ms) || reset < 0 ||
          reset > UINT32_MAX || restart < 0 || restart > UINT32_MAX ||
          (safe != "t" && safe != "f")) {
        Release(std::move(*conn));
        return absl::DataLossError(absl::StrCat(
            "clock state: the row of ", identity,
            " in hwid_tpm_clock_state is corrupt; delete it to start this identity afresh"));
      }
      r.ak_name = PQgetvalue(res.get(), 0, 1);
      r.reset_count = static_cast<uint32_t>(reset);
      r.restart_count = static_cast<uint32_t>(restart);
      r.safe = safe == "t";
      out = std::move(s);
    }
    Release(std::move(*conn));
    return out;
  }

  absl::StatusOr<bool> CompareAndSet(const std::string& identity, int64_t expected_version,
                                     const ClockRecord& record) override {
    absl::StatusOr<PgConn> conn = Acquire();
    if (!conn.ok()) {
      return conn.status();
    }
    const std::string clock = absl::StrCat(record.clock);
    const std::string reset = absl::StrCat(record.reset_count);
    const std::string restart = absl::StrCat(record.restart_count);
    const std::string fw = absl::StrCat(record.firmware_version);
    const std::string verified_at = absl::StrCat(record.verified_at_ms);
    const std::string version = absl::StrCat(expected_version);
    const char* params[] = {identity.c_str(), record.ak_name.c_str(), clock.c_str(),
                            reset.c_str(),    restart.c_str(),        record.safe ? "t" : "f",
                            fw.c_str(),       verified_at.c_str(),    version.c_str()};
    PgResult res(expected_version == 0
                     ? PQexecParams(conn->get(), kInsert, 8, nullptr, params, nullptr, nullptr, 0)
                     : PQexecParams(conn->get(), kUpdate, 9, nullptr, params, nullptr, nullptr, 0));
    if (PQresultStatus(res.get()) != PGRES_COMMAND_OK) {
      return Failed(std::move(*conn), "writing the clock record");
    }
    const bool won = std::string(PQcmdTuples(res.get())) == "1";
    Release(std::move(*conn));
    return won;
  }

  std::string Describe() const override { return "postgres store (table hwid_tpm_clock_state)"; }

 private:
  // Acquire: an idle connection, or a new one (table created on first use). UNAVAILABLE when
  // the database cannot be reached.
  absl::StatusOr<PgConn> Acquire() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        PgConn c = std::move(idle_.back());
        idle_.pop_back();
        return c;
      }
    }
    const char* keys[] = {"dbname", "connect_timeout", "application_name", nullptr};
    const char* values[] = {conninfo_.c_str(), "5", "hwid_tpm", nullptr};
    PgConn c(PQconnectdbParams(keys, values, /*expand_dbname=*/1));
    if (c == nullptr || PQstatus(c.get()) != CONNECTION_OK) {
      return absl::UnavailableError(
          absl::StrCat("cannot connect to PostgreSQL: ",
                       c == nullptr ? "out of memory" : PgError(c.get()),
                       " (check the database and the connection string in the configured "
                       "conninfo file or environment variable)"));
    }
    // Server notices (e.g. "relation already exists, skipping") would go to stderr, which is the
    // plugin's log channel: dropped.
    PQsetNoticeProcessor(c.get(), [](void*, const char*) {}, nullptr);
    bool need_table = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      need_table = !table_ready_;
    }
    if (need_table) {
      PgResult res(PQexec(c.get(), kCreateTable));
      const char* sqlstate = PQresultErrorField(res.get(), PG_DIAG_SQLSTATE);
      const std::string state = sqlstate != nullptr ? sqlstate : "";
      // 23505/42P07: another server created the table at the same moment.
      if (PQresultStatus(res.get()) != PGRES_COMMAND_OK && state != "23505" && state != "42P07") {
        return absl::UnavailableError(absl::StrCat(
            "cannot create table hwid_tpm_clock_state: ", PgError(c.get()),
            " (the database user needs CREATE on the schema, or create the table as in "
            "docs/plugin-protocol.md, section Clock state)"));
      }
      std::lock_guard<std::mutex> lock(mu_);
      table_ready_ = true;
    }
    return c;
  }

  void Release(PgConn c) {
    if (PQstatus(c.get()) != CONNECTION_OK) {
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < kMaxIdleConnections) {
      idle_.push_back(std::move(c));
    }
  }

  // Failed: the statement failed; the connection is dropped (a new one is made next time) and
  // the error is UNAVAILABLE (database down, restarted, or refusing).
  absl::Status Failed(PgConn c, absl::string_view what) {
    return absl::UnavailableError(
        absl::StrCat("PostgreSQL error ", what, ": ", PgError(c.get())));
  }

  std::string conninfo_;
  std::mutex mu_;
  std::vector<PgConn> idle_;
  bool table_ready_ = false;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ClockStateStore>> NewPostgresClockStore(std::string conninfo) {
  if (conninfo.empty()) {
    return absl::FailedPreconditionError("clock state: the PostgreSQL connection string is empty");
  }
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &err);
  // libpq's parse error may quote the string (and so the password): not repeated here.
  PQfreemem(err);
  if (parsed == nullptr) {
    std::fill(conninfo.begin(), conninfo.end(), '\0');
    return absl::FailedPreconditionError(
        "clock state: libpq cannot parse the PostgreSQL connection string (key=value pairs or a "
        "postgresql:// URI; the string is not shown because it may hold a password)");
  }
  PQconninfoFree(parsed);
  return std::unique_ptr<ClockStateStore>(new PostgresClockStore(std::move(conninfo)));
}

}  // namespace hwid::attestation
