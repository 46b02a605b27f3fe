#include "runner.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "../db/results.h"
#include "../train/train.h"

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void git_commit(char out[64]) {
    snprintf(out, 64, "unknown");
    FILE *p = popen("git rev-parse HEAD 2>/dev/null", "r");
    if (!p) return;
    char buf[128];
    if (fgets(buf, sizeof buf, p) && strlen(buf) >= 40) {
        buf[strcspn(buf, "\n")] = 0;
        snprintf(out, 64, "%s", buf);
    }
    pclose(p);
}

/* ---- the child: one run ----------------------------------------------------------- */

typedef struct {
    ResultWriter *w;
    int fd;
} ChildSink;

static void child_metric(void *ctx, long step, int epoch, const char *key, double v) {
    ChildSink *c = ctx;
    results_metric(c->w, step, epoch, key, v);
    if (!strcmp(key, "test_token_acc")) results_flush(c->w); /* last row of an epoch */
}

static void child_final(void *ctx, const char *key, const char *kind, double v) {
    results_final(((ChildSink *)ctx)->w, key, kind, v);
}

/* "P step total epoch loss acc" lines to the parent (one write each: atomic) */
static void child_progress(void *ctx, long step, long total, int epoch, double loss, double acc,
                           double tps) {
    char line[160];
    int n = snprintf(line, sizeof line, "P %ld %ld %d %.6g %.6g\n", step, total, epoch, loss, acc);
    if (write(((ChildSink *)ctx)->fd, line, (size_t)n) < 0) { /* parent gone: PDEATHSIG ends us */ }
}

static _Noreturn void run_child(const RunnerOpts *o, const PlanRun *run, long run_id, int fd,
                                pid_t parent, const sigset_t *mask) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    /* a stop signal that came since the fork was held (see the fork): it ends us now */
    if (sigprocmask(SIG_SETMASK, mask, NULL) != 0) _exit(69);
    /* die with the sweep process (kill -9 of the sweep must not leave a
     * worker writing to a run the next invocation redoes) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(70);
    if (dup2(fd, STDERR_FILENO) < 0) _exit(71);
#ifdef _OPENMP
    if (o->workers > 1) {
        int t = omp_get_num_procs() / o->workers;
        omp_set_num_threads(t > 0 ? t : 1);
    }
#endif
    Err err;
    sqlite3 *db = db_open(o->db_path, 0, &err);
    if (!db) {
        fprintf(stderr, "%s\n", err.msg);
        _exit(72);
    }
    ChildSink cs = {results_writer(db, run_id), fd};
    RunSink sink = {.ctx = &cs, .metric = child_metric, .progress = child_progress, .final = child_final};
    RunResult r = train_run(run->cfg, &sink);
    const char *status = r.status == RUN_FINISHED ? "finished" : r.status == RUN_DIVERGED ? "diverged" : "failed";
    results_end(cs.w, status, r.step, r.status == RUN_FINISHED ? NULL : r.reason);
    db_close(db);
    _exit(0);
}

/* ---- the parent: scheduling and the live line ------------------------------------- */

typedef struct {
    pid_t pid;
    int fd, plan_index;
    long run_id;
    double t0;
    long step, total;
    int epoch;
    double loss, acc;
    char buf[4096];
    int len;
    char last_err[512]; /* last stderr line of the child: the reason if it dies */
} Slot;

static void slot_line(Slot *s, const char *line) {
    if (line[0] == 'P' && line[1] == ' ') {
        sscanf(line + 2, "%ld %ld %d %lf %lf", &s->step, &s->total, &s->epoch, &s->loss, &s->acc);
    } else if (*line) {
        snprintf(s->last_err, sizeof s->last_err, "%s", line);
    }
}

/* reads what the child wrote; 0 at end of file */
static int slot_read(Slot *s) {
    ssize_t n = read(s->fd, s->buf + s->len, sizeof s->buf - 1 - (size_t)s->len);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? 1 : 0;
    if (n == 0) return 0;
    s->len += (int)n;
    s->buf[s->len] = 0;
    char *start = s->buf, *nl;
    while ((nl = strchr(start, '\n'))) {
        *nl = 0;
        slot_line(s, start);
        start = nl + 1;
    }
    s->len = (int)strlen(start);
    memmove(s->buf, start, (size_t)s->len + 1);
    if (s->len == (int)sizeof s->buf - 1) s->len = 0; /* an overlong line: drop it */
    return 1;
}

static void fmt_time(double s, char *out, size_t n) {
    if (!isfinite(s) || s < 0) snprintf(out, n, "?");
    else if (s < 60) snprintf(out, n, "%.0fs", s);
    else if (s < 3600) snprintf(out, n, "%dm%02ds", (int)s / 60, (int)s % 60);
    else snprintf(out, n, "%dh%02dm", (int)s / 3600, (int)s % 3600 / 60);
}

typedef struct {
    const Sweep *sweep;
    const Plan *plan;
    const RunnerOpts *o;
    RunnerStats *st;
    int total, done;   /* runs with an outcome (before + now) out of the plan */
    double run_seconds; /* sum over runs finished by this process */
    int runs_timed;
    double t_start;
    int line_shown;
} View;

static void draw(View *v, Slot *slots, int nslots) {
    if (!v->o->tty) return;
    int width = 160;
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) width = ws.ws_col;
    int remaining = v->total - v->done;
    /* ETA: mean run time so far, or the current run's projection */
    double per = v->runs_timed ? v->run_seconds / v->runs_timed : NAN;
    Slot *cur = NULL;
    for (int i = 0; i < nslots; i++)
        if (slots[i].pid && (!cur || slots[i].t0 > cur->t0)) cur = &slots[i];
    if (!v->runs_timed && cur && cur->total > 0 && cur->step > 0)
        per = (now_s() - cur->t0) * (double)cur->total / (double)cur->step;
    double eta = per * ceil((double)remaining / v->o->workers);
    if (cur && v->runs_timed == 0 && cur->step > 0) eta -= now_s() - cur->t0;
    char etas[32];
    fmt_time(eta, etas, sizeof etas);
    char bar[21];
    int fill = v->total ? 20 * v->done / v->total : 20;
    for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '-';
    bar[20] = 0;
    char line[512];
    int n = snprintf(line, sizeof line, "[%s] %d/%d %3.0f%% ETA %s", bar, v->done, v->total,
                     v->total ? 100.0 * v->done / v->total : 100.0, etas);
    if (cur) {
        const PlanRun *r = &v->plan->runs[cur->plan_index];
        n += snprintf(line + n, sizeof line - (size_t)n, " | run %ld %s: ep %d step %ld/%ld loss %.3f acc %.3f",
                      cur->run_id, r->overrides, cur->epoch + 1, cur->step, cur->total, cur->loss, cur->acc);
    }
    if (n > width - 1) line[width - 1] = 0;
    fprintf(stderr, "\r\033[K%s", line);
    fflush(stderr);
    v->line_shown = 1;
}

static void clear_line(View *v) {
    if (v->line_shown) fprintf(stderr, "\r\033[K");
    v->line_shown = 0;
}

static double final_value(sqlite3 *db, long id, const char *key, char status[16], char reason[600]) {
    sqlite3_stmt *st = db_prepare(db,
        "SELECT status, coalesce(error, ''), (SELECT value FROM final_metrics WHERE run_id = ?1 AND key = ?2 "
        "ORDER BY kind = 'at_best_ppl' DESC, kind = 'best' DESC LIMIT 1) FROM runs WHERE id = ?1");
    SQL_CHECK(db, sqlite3_bind_int64(st, 1, id));
    SQL_CHECK(db, sqlite3_bind_text(st, 2, key, -1, SQLITE_TRANSIENT));
    double v = NAN;
    snprintf(status, 16, "?");
    reason[0] = 0;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        snprintf(status, 16, "%s", (const char *)sqlite3_column_text(st, 0));
        snprintf(reason, 600, "%s", (const char *)sqlite3_column_text(st, 1));
        if (sqlite3_column_type(st, 2) != SQLITE_NULL) v = sqlite3_column_double(st, 2);
    } else if (rc != SQLITE_DONE) db_check_fail(db, rc, "final_value", __FILE__, __LINE__);
    db_finalize(db, st);
    return v;
}

/* a child ended: record a reason if it could not, count, print its line */
static void reap(View *v, sqlite3 *db, Slot *s, int wstatus) {
    if (s->fd >= 0) {
        while (slot_read(s)) {}
        close(s->fd);
        s->fd = -1;
    }
    int clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    if (g_stop && !clean) {
        /* interrupted: the run goes back to the queue for the next invocation */
        results_requeue(db, s->run_id);
        char st[16], reason[600];
        final_value(db, s->run_id, v->sweep->metric, st, reason);
        if (!strcmp(st, "queued")) {
            v->st->interrupted++;
            s->pid = 0;
            return;
        }
    } else if (!clean) {
        char why[800];
        if (WIFSIGNALED(wstatus))
            snprintf(why, sizeof why, "worker killed by signal %d (%s)%s%s", WTERMSIG(wstatus),
                     strsignal(WTERMSIG(wstatus)), s->last_err[0] ? ": " : "", s->last_err);
        else
            snprintf(why, sizeof why, "worker exited with status %d%s%s", WEXITSTATUS(wstatus),
                     s->last_err[0] ? ": " : "", s->last_err);
        results_fail_if_running(db, s->run_id, why, s->step);
    }
    char status[16], reason[600];
    double val = final_value(db, s->run_id, v->sweep->metric, status, reason);
    if (!strcmp(status, "finished")) v->st->finished++;
    else if (!strcmp(status, "diverged")) v->st->diverged++;
    else v->st->failed++;
    v->done++;
    double secs = now_s() - s->t0;
    if (!strcmp(status, "finished")) v->run_seconds += secs, v->runs_timed++;
    clear_line(v);
    const PlanRun *r = &v->plan->runs[s->plan_index];
    if (!strcmp(status, "finished"))
        printf("[%d/%d] finished run %ld %s  %s %.4f  (%.1f s)\n", v->done, v->total, s->run_id,
               r->overrides, v->sweep->metric, val, secs);
    else
        printf("[%d/%d] %s run %ld %s: %s\n", v->done, v->total, status, s->run_id, r->overrides, reason);
    fflush(stdout);
    s->pid = 0;
}

int sweep_run(const Sweep *sw, const Plan *plan, const RunnerOpts *o, RunnerStats *st, Err *err) {
    memset(st, 0, sizeof *st);
    st->planned = plan->n;
    sqlite3 *db = db_open(o->db_path, 1, err);
    if (!db) return -1;
    char host[256] = "localhost", git[64];
    gethostname(host, sizeof host - 1);
    git_commit(git);
    pid_t me = getpid();

    /* queue the plan: one transaction for the runs and their params */
    results_sweep_begin(db, sw->name, sw->yaml, sw->file);
    int requeued = results_requeue_stale(db, sw->name, host);
    db_begin(db);
    int added = 0;
    for (int i = 0; i < plan->n; i++)
        added += results_queue(db, sw->name, plan->runs[i].hash, plan->runs[i].overrides, plan->runs[i].cfg);
    db_commit(db);
    int *todo = xmalloc(sizeof(int) * (size_t)(plan->n ? plan->n : 1)), ntodo = 0;
    for (int i = 0; i < plan->n; i++) {
        char s[16];
        results_status(db, sw->name, plan->runs[i].hash, s);
        if (!strcmp(s, "finished") || !strcmp(s, "diverged")) st->done_before++;
        else todo[ntodo++] = i;
    }
    printf("sweep %s: %d runs (%d new, %d done before, %d to run%s), %d worker%s, database %s\n",
           sw->name, plan->n, added, st->done_before, ntodo,
           requeued ? ", including interrupted or failed ones" : "", o->workers,
           o->workers > 1 ? "s" : "", o->db_path);
    fflush(stdout);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll returns EINTR */
    struct sigaction old_int, old_term;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    g_stop = 0;

    View v = {sw, plan, o, st, plan->n, st->done_before, 0, 0, now_s(), 0};
    Slot *slots = xcalloc((size_t)o->workers, sizeof(Slot));
    int next = 0, active = 0, forwarded = 0;
    double last_draw = 0;
    while ((next < ntodo && !g_stop) || active > 0) {
        /* start runs while slots are free */
        for (int k = 0; k < o->workers && next < ntodo && !g_stop; k++) {
            if (slots[k].pid) continue;
            long id = 0;
            int pi = -1;
            while (!id && next < ntodo) {
                pi = todo[next++];
                id = results_claim(db, sw->name, plan->runs[pi].hash, me, host, git,
                                   cfg_str(plan->runs[pi].cfg, "device"));
                if (!id) st->elsewhere++, v.total--; /* another process has it or finished it */
            }
            if (!id) break;
            const PlanRun *r = &plan->runs[pi];
            int fds[2];
            CHECK(pipe(fds) == 0, "pipe failed: %s", strerror(errno));
            fflush(stdout), fflush(stderr);
            db_close(db); /* never carry an SQLite connection across fork */
            /* hold SIGINT/SIGTERM over the fork: until the child has its default handlers
             * back, our on_signal would swallow the stop we forward to it */
            sigset_t stops, mask;
            sigemptyset(&stops), sigaddset(&stops, SIGINT), sigaddset(&stops, SIGTERM);
            CHECK(sigprocmask(SIG_BLOCK, &stops, &mask) == 0, "sigprocmask failed: %s", strerror(errno));
            pid_t pid = fork();
            CHECK(pid >= 0, "fork failed: %s", strerror(errno));
            if (pid == 0) {
                close(fds[0]);
                run_child(o, r, id, fds[1], me, &mask);
            }
            CHECK(sigprocmask(SIG_SETMASK, &mask, NULL) == 0, "sigprocmask failed: %s", strerror(errno));
            close(fds[1]);
            db = db_open(o->db_path, 0, err);
            CHECK(db, "reopening the database failed: %s", err->msg);
            Slot *s = &slots[k];
            memset(s, 0, sizeof *s);
            s->pid = pid, s->fd = fds[0], s->plan_index = pi, s->run_id = id, s->t0 = now_s();
            active++;
            if (!o->tty) {
                printf("[%d/%d] start run %ld %s\n", v.done + 1, v.total, id, r->overrides);
                fflush(stdout);
            }
        }
        if (g_stop && !forwarded) { /* Ctrl-C reaches the children from the terminal; kill does not */
            for (int k = 0; k < o->workers; k++)
                if (slots[k].pid) kill(slots[k].pid, SIGTERM);
            forwarded = 1;
        }
        /* wait for output or an exit */
        struct pollfd pf[64];
        int map[64], np = 0;
        for (int k = 0; k < o->workers && np < 64; k++)
            if (slots[k].pid && slots[k].fd >= 0) pf[np].fd = slots[k].fd, pf[np].events = POLLIN, map[np++] = k;
        int rc = poll(pf, (nfds_t)np, 200);
        for (int i = 0; rc > 0 && i < np; i++)
            if (pf[i].revents & (POLLIN | POLLHUP)) {
                Slot *sl = &slots[map[i]];
                if (!slot_read(sl)) close(sl->fd), sl->fd = -1; /* end of file: the child is ending */
            }
        int wstatus;
        pid_t done;
        while ((done = waitpid(-1, &wstatus, WNOHANG)) > 0)
            for (int k = 0; k < o->workers; k++)
                if (slots[k].pid == done) {
                    reap(&v, db, &slots[k], wstatus);
                    active--;
                }
        if (now_s() - last_draw > 0.25 && active > 0) {
            draw(&v, slots, o->workers);
            last_draw = now_s();
        }
    }
    clear_line(&v);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    free(slots);
    free(todo);
    db_close(db);
    return g_stop ? 130 : 0;
}
