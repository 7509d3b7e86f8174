//! The PostgreSQL ledger's schema: versioned migrations, recorded in the table
//! `schema_version` of the ledger's schema (the same idea as the SQLite file's `user_version`).
//!
//! Step 1 is the SQLite schema as its 12 steps left it, in PostgreSQL's types: integers are
//! `BIGINT` (money, sizes and times are checked against `i64::MAX` before they are stored, as
//! in SQLite), ids `BYTEA` (compared byte by byte, so `ORDER BY id` is the ids' order), flags
//! `BOOLEAN`, plans, prices and signatures JSON `TEXT`. Where SQLite orders by `rowid`, a
//! `seq` identity column keeps the order of insertion.

use super::pool::Lent;
use super::quote_ident;
use crate::ledger::LedgerError;

/// The schema, one step per entry; `schema_version.version` is the number of steps applied.
/// Append new steps; never edit a released one.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's steps 1 to 12.
    "
    CREATE TABLE accounts (
        name TEXT PRIMARY KEY NOT NULL,
        balance BIGINT NOT NULL CHECK (balance >= 0),
        created_at_s BIGINT NOT NULL
    );

    CREATE TABLE keys (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id BYTEA PRIMARY KEY NOT NULL CHECK (length(id) = 16),
        account TEXT NOT NULL REFERENCES accounts(name),
        secret_hash BYTEA NOT NULL CHECK (length(secret_hash) = 32),
        created_at_s BIGINT NOT NULL,
        expires_at_s BIGINT,
        revoked_at_s BIGINT
    );
    CREATE INDEX keys_by_account ON keys(account, created_at_s, seq);

    CREATE TABLE models (
        id BYTEA PRIMARY KEY NOT NULL CHECK (length(id) = 32),
        bytes BIGINT NOT NULL CHECK (bytes >= 0),
        account TEXT NOT NULL REFERENCES accounts(name),
        stored_at_s BIGINT NOT NULL,
        public BOOLEAN NOT NULL DEFAULT FALSE,
        signature TEXT
    );

    CREATE TABLE model_owners (
        model BYTEA NOT NULL REFERENCES models(id),
        account TEXT NOT NULL REFERENCES accounts(name),
        since_s BIGINT NOT NULL,
        PRIMARY KEY (model, account)
    );

    CREATE TABLE deployments (
        seq BIGINT GENERATED ALWAYS AS IDENTITY,
        id BYTEA PRIMARY KEY NOT NULL CHECK (length(id) = 16),
        account TEXT NOT NULL REFERENCES accounts(name),
        key BYTEA NOT NULL REFERENCES keys(id),
        model BYTEA NOT NULL REFERENCES models(id),
        model_bytes BIGINT NOT NULL CHECK (model_bytes >= 0),
        plan TEXT NOT NULL,
        price TEXT NOT NULL,
        allowance_left BIGINT NOT NULL CHECK (allowance_left >= 0),
        created_at_s BIGINT NOT NULL,
        stopped_at_s BIGINT,
        verifiability TEXT NOT NULL,
        updates BIGINT NOT NULL DEFAULT 0 CHECK (updates >= 0),
        updated_at_s BIGINT,
        refund_at_s BIGINT
    );
    CREATE INDEX deployments_active ON deployments(created_at_s, seq) WHERE stopped_at_s IS NULL;
    CREATE INDEX deployments_refund_due ON deployments(refund_at_s, seq)
        WHERE refund_at_s IS NOT NULL;

    CREATE TABLE model_updates (
        deployment BYTEA NOT NULL REFERENCES deployments(id),
        seq BIGINT NOT NULL CHECK (seq >= 1),
        previous BYTEA NOT NULL CHECK (length(previous) = 32),
        model BYTEA NOT NULL REFERENCES models(id),
        model_bytes BIGINT NOT NULL CHECK (model_bytes >= 0),
        verifiability TEXT NOT NULL,
        charged BIGINT NOT NULL CHECK (charged >= 0),
        at_s BIGINT NOT NULL,
        PRIMARY KEY (deployment, seq)
    );

    CREATE TABLE journal (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account TEXT NOT NULL REFERENCES accounts(name),
        kind TEXT NOT NULL CHECK (kind IN ('grant', 'deploy', 'usage', 'refund', 'update')),
        amount BIGINT NOT NULL CHECK (amount >= 0),
        deployment BYTEA,
        task BYTEA,
        at_s BIGINT NOT NULL,
        counts_as_income BOOLEAN NOT NULL
    );
    CREATE INDEX journal_income ON journal(at_s) WHERE counts_as_income;

    CREATE TABLE usage (
        deployment BYTEA NOT NULL REFERENCES deployments(id),
        task BYTEA NOT NULL CHECK (length(task) = 16),
        inputs_digest BYTEA NOT NULL CHECK (length(inputs_digest) = 32),
        key BYTEA NOT NULL,
        node BYTEA NOT NULL,
        input_bytes BIGINT NOT NULL,
        output_bytes BIGINT NOT NULL,
        compute_us BIGINT NOT NULL,
        charged BIGINT NOT NULL CHECK (charged >= 0),
        uncollected BIGINT NOT NULL CHECK (uncollected >= 0),
        at_s BIGINT NOT NULL,
        PRIMARY KEY (deployment, task, inputs_digest)
    );
    CREATE INDEX usage_by_node ON usage(node, at_s);

    CREATE TABLE acks (
        ticket_nonce BYTEA NOT NULL CHECK (length(ticket_nonce) = 16),
        node BYTEA NOT NULL CHECK (length(node) = 32),
        deployment BYTEA NOT NULL CHECK (length(deployment) = 16),
        key BYTEA NOT NULL CHECK (length(key) = 16),
        settle_at_s BIGINT NOT NULL,
        acked_tasks BIGINT NOT NULL CHECK (acked_tasks >= 0),
        acked_credits BIGINT NOT NULL CHECK (acked_credits >= 0),
        acked_accumulator BYTEA NOT NULL CHECK (length(acked_accumulator) = 32),
        charged_tasks BIGINT NOT NULL DEFAULT 0 CHECK (charged_tasks >= 0),
        charged_credits BIGINT NOT NULL DEFAULT 0 CHECK (charged_credits >= 0),
        charged_accumulator BYTEA NOT NULL DEFAULT decode(repeat('00', 32), 'hex')
            CHECK (length(charged_accumulator) = 32),
        settled_at_s BIGINT,
        PRIMARY KEY (ticket_nonce, node)
    );
    CREATE INDEX acks_unsettled ON acks(settle_at_s, ticket_nonce, node)
        WHERE settled_at_s IS NULL;

    CREATE TABLE nodes (
        id BYTEA PRIMARY KEY NOT NULL CHECK (length(id) = 32),
        rating BIGINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
        registered_at_s BIGINT NOT NULL,
        mining_income BIGINT NOT NULL,
        crat_micro BIGINT NOT NULL,
        streak BIGINT NOT NULL,
        uptime_total_s BIGINT NOT NULL
    );
    CREATE INDEX nodes_streaking ON nodes(id) WHERE streak > 0;

    CREATE TABLE sessions (
        node BYTEA NOT NULL REFERENCES nodes(id),
        start_s BIGINT NOT NULL,
        end_s BIGINT NOT NULL CHECK (end_s >= start_s),
        cut_s BIGINT,
        PRIMARY KEY (node, start_s)
    );
    CREATE INDEX sessions_by_end ON sessions(end_s);

    CREATE TABLE validations (
        node BYTEA NOT NULL REFERENCES nodes(id),
        at_s BIGINT NOT NULL,
        ok BIGINT NOT NULL,
        failed BIGINT NOT NULL,
        PRIMARY KEY (node, at_s)
    );
    CREATE INDEX validations_by_time ON validations(at_s);

    CREATE TABLE rounds (
        idx BIGINT PRIMARY KEY NOT NULL,
        start_s BIGINT NOT NULL,
        length_s BIGINT NOT NULL,
        income BIGINT NOT NULL,
        carry_out BIGINT NOT NULL,
        paid BIGINT NOT NULL,
        inputs_json TEXT NOT NULL,
        outcome_json TEXT NOT NULL,
        settled_at_s BIGINT,
        settlement_digest BYTEA
            CHECK (settlement_digest IS NULL OR length(settlement_digest) = 32)
    );
    CREATE INDEX rounds_unsettled ON rounds(idx) WHERE settled_at_s IS NULL;

    CREATE TABLE round_nodes (
        round BIGINT NOT NULL REFERENCES rounds(idx),
        node BYTEA NOT NULL CHECK (length(node) = 32),
        start_s BIGINT NOT NULL,
        uptime_s BIGINT NOT NULL CHECK (uptime_s >= 0),
        committed BOOLEAN NOT NULL,
        rank BIGINT CHECK (rank >= 1),
        guaranteed BIGINT NOT NULL CHECK (guaranteed >= 0),
        bonus BIGINT NOT NULL CHECK (bonus >= 0),
        crat_issued BIGINT NOT NULL CHECK (crat_issued >= 0),
        crat_slashed BIGINT NOT NULL CHECK (crat_slashed >= 0),
        crat_end BIGINT NOT NULL CHECK (crat_end >= 0),
        PRIMARY KEY (node, round)
    );
    ",
    // 2: where the active dispatcher of several sharing the ledger is reached (one row,
    // written by the holder of the round-closing lock).
    "
    CREATE TABLE active_dispatcher (
        one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
        addr TEXT NOT NULL CHECK (length(addr) BETWEEN 1 AND 512)
    );
    ",
];

/// Creates the schema `schema` if it is missing and applies the migrations it lacks, in one
/// transaction that holds an advisory lock of the schema: dispatchers starting together
/// migrate once. A schema written by a newer build is [`LedgerError::Corrupt`], left as it is.
pub(super) fn migrate(conn: &mut Lent<'_>, schema: &str) -> Result<(), LedgerError> {
    let quoted = quote_ident(schema);
    conn.batch("BEGIN")
        .map_err(|e| LedgerError::Database(super::pool::describe(&e)))?;
    let result = (|| {
        let mut tx = conn.tx();
        // The schema's name (checked: see `PgOptions::schema`) keys the lock.
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 8286294501))",
            &[&schema],
        )?;
        tx.execute(&format!("CREATE SCHEMA IF NOT EXISTS {quoted}"), &[])?;
        tx.execute(
            &format!(
                "CREATE TABLE IF NOT EXISTS {quoted}.schema_version (
                     one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
                     version BIGINT NOT NULL CHECK (version >= 0)
                 )"
            ),
            &[],
        )?;
        tx.execute(
            &format!(
                "INSERT INTO {quoted}.schema_version (version) VALUES (0)
                 ON CONFLICT (one) DO NOTHING"
            ),
            &[],
        )?;
        let version: i64 = tx
            .query_one(&format!("SELECT version FROM {quoted}.schema_version"), &[])?
            .try_get(0)
            .map_err(|e| LedgerError::Corrupt(format!("schema version: {e}")))?;
        let known = MIGRATIONS.len();
        let applied = usize::try_from(version).map_err(|_| {
            LedgerError::Corrupt(format!("the ledger's schema version {version} is negative"))
        })?;
        if applied > known {
            return Err(LedgerError::Corrupt(format!(
                "the ledger's schema version is {applied}, newer than this build knows \
                 ({known}): it was written by a newer dispatcher; upgrade instead of \
                 downgrading"
            )));
        }
        Ok(applied)
    })();
    let applied = match result {
        Ok(applied) => applied,
        Err(e) => {
            let _ = conn.batch("ROLLBACK");
            return Err(e);
        }
    };
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        // The connection's search_path is the schema: the steps name no schema.
        if let Err(e) = conn.batch(sql) {
            let _ = conn.batch("ROLLBACK");
            return Err(LedgerError::Database(format!(
                "migration {}: {}",
                step + 1,
                super::pool::describe(&e)
            )));
        }
    }
    let version = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let done = conn.batch(&format!(
        "UPDATE {quoted}.schema_version SET version = {version}; COMMIT"
    ));
    if let Err(e) = done {
        let _ = conn.batch("ROLLBACK");
        return Err(LedgerError::Database(format!(
            "migrating the ledger: {}",
            super::pool::describe(&e)
        )));
    }
    Ok(())
}
