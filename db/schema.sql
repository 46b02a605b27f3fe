-- Parallax Lab results database, schema version 1.
--
-- One SQLite file (default plab.db) holds every sweep, run, parameter and
-- metric. Shaped like MLflow's tracking store (runs / params / metrics /
-- latest metrics) so it reads familiar; plain SQL, so the sqlite3 shell and
-- pandas.read_sql open it with no help. `plab` embeds this file and applies it
-- to a new database; later versions append migrations (db/db.c) and bump
-- PRAGMA user_version. PRAGMA application_id = 0x706c6162 ('plab') marks the
-- file as ours.
--
-- Conventions: times are ISO-8601 UTC text; a NaN metric value is stored as
-- NULL (SQLite has no NaN); +-inf are stored as REAL infinities.

-- A sweep file as it was run (the latest text under that name).
CREATE TABLE sweeps (
    name    TEXT PRIMARY KEY,
    yaml    TEXT NOT NULL,           -- the sweep file's full text
    file    TEXT,                    -- the path it was read from
    created TEXT NOT NULL,           -- first run of this sweep name
    updated TEXT NOT NULL            -- last time `plab sweep` started on it
);

-- One row per resolved config of a sweep. A run is identified by the hash of
-- its resolved config (cfg_hash: every key that changes the result), so a
-- re-run of the same sweep skips what is finished and redoes the rest.
CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    sweep       TEXT NOT NULL REFERENCES sweeps(name),
    config_hash TEXT NOT NULL,       -- 16 hex digits (FNV-1a of the canonical config)
    overrides   TEXT NOT NULL,       -- the sweep's parameter choices, "key=value key=value"
    status      TEXT NOT NULL DEFAULT 'queued'
                CHECK (status IN ('queued', 'running', 'finished', 'failed', 'diverged')),
    attempts    INTEGER NOT NULL DEFAULT 0,  -- times a worker claimed it (1 when all went well)
    git_commit  TEXT,                -- `git rev-parse HEAD` of the working tree, if any
    device      TEXT,                -- the run's device key (cpu, cuda:N)
    host        TEXT,                -- machine of the worker
    worker_pid  INTEGER,             -- pid of the `plab sweep` process that claimed it
    queued_at   TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    step        INTEGER,             -- steps done (where it diverged or failed)
    error       TEXT,                -- why it failed or diverged
    UNIQUE (sweep, config_hash)
);
CREATE INDEX runs_status ON runs(sweep, status);

-- Every key of the resolved config, defaults included (one row per key).
-- Values are canonical text (numbers normalised), as `plab train` prints them.
CREATE TABLE params (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE INDEX params_key ON params(key, value);

-- Full metric history: train_loss and lr every log interval; test_loss,
-- test_ppl, test_acc (MAD macro accuracy) and test_token_acc every epoch.
CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    epoch  INTEGER NOT NULL,
    key    TEXT NOT NULL,
    value  REAL                      -- NULL = NaN
);
CREATE INDEX metrics_run ON metrics(run_id, key, step);

-- Final values of a finished run. kind: 'last' (final value), 'best' (best
-- over epochs) or 'at_best_ppl' (value at the epoch of lowest test
-- perplexity: MAD's reported test_acc, mad.md §4.4).
CREATE TABLE final_metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT NOT NULL,
    kind   TEXT NOT NULL CHECK (kind IN ('last', 'best', 'at_best_ppl')),
    value  REAL,
    PRIMARY KEY (run_id, key, kind)
) WITHOUT ROWID;

-- ---- attention statistics (filled by the analysis work) -------------------------
-- Histogram of attention scores or weights of one head at one step.
CREATE TABLE attn_hist (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step     INTEGER NOT NULL,
    layer    INTEGER NOT NULL,
    head     INTEGER NOT NULL,
    quantity TEXT NOT NULL,          -- e.g. 'score', 'weight', 'correction'
    bin_lo   REAL NOT NULL,
    bin_hi   REAL NOT NULL,
    count    INTEGER NOT NULL
);
CREATE INDEX attn_hist_run ON attn_hist(run_id, step, layer, head);

-- Attention sinks: mean attention mass a head puts on one key position.
CREATE TABLE attn_sink (
    run_id   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step     INTEGER NOT NULL,
    layer    INTEGER NOT NULL,
    head     INTEGER NOT NULL,
    sink_pos INTEGER NOT NULL,
    mass     REAL NOT NULL
);
CREATE INDEX attn_sink_run ON attn_sink(run_id, step, layer, head);

-- Any other per-layer (head = -1) or per-head diagnostic, by name.
CREATE TABLE layer_diag (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step   INTEGER NOT NULL,
    layer  INTEGER NOT NULL,
    head   INTEGER NOT NULL DEFAULT -1,
    key    TEXT NOT NULL,
    value  REAL
);
CREATE INDEX layer_diag_run ON layer_diag(run_id, key, step);

-- ---- views: common questions without joins ---------------------------------------

-- One row per run: its main parameters and final accuracy.
-- test_acc = MAD accuracy at the best-perplexity epoch; best_test_acc = best epoch.
CREATE VIEW run_summary AS
SELECT r.id, r.sweep, r.status, r.config_hash,
       (SELECT value FROM params WHERE run_id = r.id AND key = 'task') AS task,
       (SELECT value FROM params WHERE run_id = r.id AND key = 'model.mixer') AS mixer,
       (SELECT value FROM params WHERE run_id = r.id AND key = 'optim') AS optim,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'lr') AS REAL) AS lr,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'weight_decay') AS REAL)
           AS weight_decay,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'seed') AS INTEGER) AS seed,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'task.vocab_size') AS INTEGER)
           AS vocab_size,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'task.seq_len') AS INTEGER)
           AS seq_len,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'task.num_train') AS INTEGER)
           AS num_train,
       CAST((SELECT value FROM params WHERE run_id = r.id AND key = 'model.d_model') AS INTEGER)
           AS d_model,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'test_acc'
            AND kind = 'at_best_ppl') AS test_acc,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'test_acc'
            AND kind = 'best') AS best_test_acc,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'test_ppl'
            AND kind = 'best') AS test_ppl,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'train_loss'
            AND kind = 'last') AS train_loss,
       CAST((SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'epochs'
            AND kind = 'last') AS INTEGER) AS epochs,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'seconds'
            AND kind = 'last') AS seconds,
       r.overrides, r.step, r.error, r.started_at, r.finished_at
FROM runs r;

-- Latest value of every metric of every run (MLflow's latest_metrics).
CREATE VIEW latest_metrics AS
SELECT m.run_id, m.key, m.value, m.step, m.epoch
FROM metrics m
WHERE m.rowid = (SELECT max(rowid) FROM metrics WHERE run_id = m.run_id AND key = m.key);

-- MAD score (mad.md §4.5), in three steps, per sweep.
-- A run's "mechanism" is its sequence mixer: model.mixer and every mixer.* key
-- (the protocol around it is the sweep's; tasks may preset model keys, e.g.
-- compression's autoencoder backbone, so those cannot identify a mechanism).
-- Its "setting" is its task keys (task.*; the task itself is a column). Only
-- finished runs count: failed and diverged ones are dropped first, as MAD
-- drops NaN results.
CREATE VIEW mad_run AS
SELECT r.id AS run_id, r.sweep,
       (SELECT value FROM params WHERE run_id = r.id AND key = 'model.mixer') AS mixer,
       (SELECT value FROM params WHERE run_id = r.id AND key = 'task') AS task,
       (SELECT group_concat(key || '=' || value, ' ') FROM
            (SELECT key, value FROM params WHERE run_id = r.id
                 AND (key = 'model.mixer' OR key LIKE 'mixer.%') ORDER BY key)) AS mechanism,
       (SELECT group_concat(key || '=' || value, ' ') FROM
            (SELECT key, value FROM params WHERE run_id = r.id
                 AND key LIKE 'task.%' ORDER BY key)) AS setting,
       (SELECT value FROM final_metrics WHERE run_id = r.id AND key = 'test_acc'
            AND kind = 'at_best_ppl') AS test_acc
FROM runs r
WHERE r.status = 'finished';

-- 1. best test_acc over the lr x weight_decay (x seed) runs of each setting
CREATE VIEW mad_setting AS
SELECT sweep, mixer, mechanism, task, setting, max(test_acc) AS best_acc, count(*) AS runs
FROM mad_run WHERE test_acc IS NOT NULL
GROUP BY sweep, mechanism, task, setting;

-- 2. task score: unweighted mean over the task's settings (MAD: 11/11/14/13/11/6)
CREATE VIEW mad_task_score AS
SELECT sweep, mixer, mechanism, task, avg(best_acc) AS score, count(*) AS settings,
       sum(runs) AS runs
FROM mad_setting GROUP BY sweep, mechanism, task;

-- 3. MAD score: unweighted mean of the task scores (complete when tasks = 6 and
--    settings = 66)
CREATE VIEW mad_score AS
SELECT sweep, mixer, avg(score) AS mad_score, count(*) AS tasks, sum(settings) AS settings,
       sum(runs) AS runs, group_concat(task || '=' || printf('%.3f', score), ' ') AS per_task,
       mechanism
FROM mad_task_score GROUP BY sweep, mechanism;

-- How far each sweep has got.
CREATE VIEW sweep_progress AS
SELECT s.name AS sweep, count(r.id) AS runs,
       sum(r.status = 'finished') AS finished, sum(r.status = 'diverged') AS diverged,
       sum(r.status = 'failed') AS failed, sum(r.status = 'running') AS running,
       sum(r.status = 'queued') AS queued, s.updated
FROM sweeps s LEFT JOIN runs r ON r.sweep = s.name GROUP BY s.name;
