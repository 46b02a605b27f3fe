// CUDA emulation on the CPU: the execution model of emu.h (fibers, barriers, warp
// collectives, mma.sync), the runtime shim (memory, streams, graphs) and cuBLAS as
// CBLAS sgemm. Single host thread: ops are called from one thread, as the backend does.
// docs/DEVICE.md "Emulating the CUDA backend on the CPU" says what it checks.
#include "emu.h"

#include <cblas.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xmmintrin.h>

#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include "cublas_v2.h"
#include "cuda_bf16.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
// Telling ASan about every fiber switch (-DEMU_ASAN_FIBERS) makes its reports describe
// fiber stack addresses exactly, but costs about a quarter of the run time; without it,
// errors are still caught, and a failing thread may add a warning that ASan "is ignoring
// requested __asan_handle_no_return".
#ifdef EMU_ASAN_FIBERS
#define EMU_FIBER_NOTES 1
#endif
// the tests never free device memory
extern "C" const char *__asan_default_options() { return "detect_leaks=0"; }
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(EMU_UBSAN)
// UBSan stops with abort(), so that the SIGABRT hook below names the CUDA thread
extern "C" const char *__ubsan_default_options() { return "print_stacktrace=1:abort_on_error=1"; }
#endif

// Fibers switch with a few instructions on x86-64 (swapcontext costs a system call per
// switch, about 200 ns here: too slow for a training run); elsewhere ucontext.
#if defined(__x86_64__) && !defined(EMU_UCONTEXT)
#define EMU_FAST_SWITCH 1
// saves the callee-saved registers, MXCSR and the x87 control word on the current stack,
// stores the stack pointer in *save, continues on the stack `load` saved by another call
extern "C" void emu_switch(void **save, void *load);
asm(R"(
    .text
    .globl emu_switch
    .type emu_switch, @function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch, .-emu_switch
)");
#else
#include <ucontext.h>
#endif

// The runtime's hot paths skip the sanitizers' checks (the kernels keep them): they run
// once per thread switch.
#define EMU_NOSAN __attribute__((no_sanitize_address, no_sanitize_undefined))

namespace emu {

uint3 tid, bid;
dim3 bdim, gdim;
unsigned long block_serial;
size_t static_smem;

namespace {

constexpr int SLOT = 64;                   // bytes a lane deposits in a warp collective
constexpr size_t SMEM_DEFAULT = 48 * 1024;  // dynamic shared memory without opt-in
constexpr size_t SMEM_OPTIN = 232448;       // H100: 227 KiB per block with opt-in

// ---- failures -----------------------------------------------------------------------------

const Site *cur_site; // the kernel running now (null outside kernels)
struct Fiber;
Fiber *cur;           // the CUDA thread running now (null in the scheduler / host code)
bool failing;         // fail() is reporting (the SIGABRT hook stays quiet)

[[noreturn]] void fail(const char *fmt, ...);

// ---- device memory: host memory, every allocation remembered ------------------------------

std::map<uintptr_t, size_t> allocs;

// the allocation holding p (p == its end counts, for pointers one past a buffer), or null
const std::pair<const uintptr_t, size_t> *alloc_of(const void *p) {
    auto it = allocs.upper_bound((uintptr_t)p);
    if (it == allocs.begin()) return nullptr;
    --it;
    return (uintptr_t)p <= it->first + it->second ? &*it : nullptr;
}
bool in_device(const void *p, size_t bytes) {
    auto a = alloc_of(p);
    return a && (uintptr_t)p + bytes <= a->first + a->second;
}
void need_device(const void *p, size_t bytes, const char *what) {
    if (!in_device(p, bytes))
        fail("%s: [%p, +%zu bytes) is not inside one cudaMalloc allocation", what, p, bytes);
}

// ---- streams and graphs ------------------------------------------------------------------------

using Op = std::function<void()>;

} // namespace
} // namespace emu

struct EmuStream {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    std::vector<emu::Op> rec; // work recorded while capturing
};
struct EmuGraph {
    std::vector<emu::Op> ops;
};
struct EmuGraphExec {
    std::vector<emu::Op> ops;
};
struct EmuBlas {
    cudaStream_t stream = nullptr;
};

namespace emu {
namespace {

EmuStream legacy_stream; // stream 0
int capturing;           // streams capturing now
cudaError_t last_error = cudaSuccess;

EmuStream *stream_of(cudaStream_t s) { return s ? s : &legacy_stream; }
// runs op now, or records it while the stream captures a graph
void submit(cudaStream_t s, Op op) {
    EmuStream *st = stream_of(s);
    if (st->status != cudaStreamCaptureStatusNone) st->rec.push_back(std::move(op));
    else op();
}
cudaError_t set_error(cudaError_t e) {
    last_error = e; // cudaGetLastError returns the latest one
    return e;
}

void banner() {
    static bool said;
    if (!said) fprintf(stderr, "CUDA emulation on the CPU (kernels/cuda/emu): no timing meaning\n");
    said = true;
}

// ---- fibers ------------------------------------------------------------------------------------

struct Stack {
    char *lo; // lowest usable byte; a PROT_NONE guard page lies below
    size_t size;
};
std::vector<Stack> free_stacks;

size_t stack_size() {
    static size_t n = 0;
    if (!n) {
        const char *e = getenv("PLAB_EMU_STACK_KB");
#ifdef EMU_ASAN
        n = (e ? strtoul(e, nullptr, 10) : 256) * 1024; // ASan's red zones take room
#else
        n = (e ? strtoul(e, nullptr, 10) : 64) * 1024;
#endif
    }
    return n;
}
Stack get_stack() {
    if (!free_stacks.empty()) {
        Stack s = free_stacks.back();
        free_stacks.pop_back();
        return s;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE), n = stack_size();
    void *m = mmap(nullptr, n + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) fail("cannot map a fiber stack of %zu bytes", n);
    mprotect(m, page, PROT_NONE); // a thread that overflows its stack faults here
    return {(char *)m + page, n};
}

// PLAB_EMU_STATS=1: per kernel, launches, threads, context switches and seconds, at exit
struct Stats {
    unsigned long launches, threads, switches;
    double seconds;
};
std::map<std::string, Stats> *stats;
unsigned long switches;
enum State { NEW, RUN, WAIT_BAR, WAIT_WARP, DONE };

struct Fiber {
    State state;
    unsigned lin; // linear thread index in the block
    uint3 tid;
    Stack stack;
#ifdef EMU_FAST_SWITCH
    void *sp;
#else
    ucontext_t uc;
#endif
    void *fake_stack; // ASan's bookkeeping
    // what it waits for, and where
    unsigned long bar_gen;
    int widx;
    unsigned wneed, wmask;
    const char *what, *file;
    int line;
};

// the block being run
struct Block {
    unsigned n, live;       // threads; threads that have not returned
    unsigned arrived;       // at the open barrier
    unsigned long gen;      // barrier generation
    const char *file;       // the open barrier's __syncthreads
    int line;
    const std::function<void()> *body;
};
Block blk;
Fiber fibers[1024];

// Warp collectives, per distinct mask (at most 4 in a block's life): the lanes of a mask
// go through its collectives together; the c-th completes (done = c + 1) when its last
// lane arrives. A lane's deposit for the c-th lies in slot[.][c & 1][lane], which nobody
// overwrites before every lane of the mask has read it (a deposit to the (c+2)-th needs
// the (c+1)-th complete, so every lane past the c-th).
constexpr int MASKS = 4;
struct Warp {
    unsigned present, exited; // lanes that exist; lanes that returned
    int nmask;
    unsigned masks[MASKS], need[MASKS]; // a mask, its lane count
    unsigned arrived[MASKS], done[MASKS]; // at the open collective; completed ones
    unsigned cnt[32][MASKS];            // collectives each lane has entered
    const char *file[MASKS][2][32];
    int line[MASKS][2][32];
    const char *what[MASKS][2][32];
    alignas(16) unsigned char slot[MASKS][2][32][SLOT];
};
Warp warps[32];

// Contexts: the host's (main) and one per started fiber. A thread that waits or returns
// switches straight to the next thread that can go on, round-robin; the last one to
// return switches back to the host.
#ifdef EMU_FAST_SWITCH
void *main_sp;
uint64_t csr_word; // MXCSR and x87 control word of a fresh fiber (those of the host)
#else
ucontext_t main_uc;
#endif
#ifdef EMU_FIBER_NOTES
void *main_fake;
const void *main_bottom; // the host stack, as ASan saw it when a fiber was entered from it
size_t main_size;
#endif
bool from_main;    // the switch under way leaves the host stack
Stack zombie;      // the stack of a thread that just returned, freed once we are off it
bool have_zombie;

void thread_exit(Fiber *f);
EMU_NOSAN bool warp_ready(const Fiber &f) { return warps[f.lin >> 5].done[f.widx] >= f.wneed; }

// what every context does right after a switch brought it in
__attribute__((no_sanitize_address)) void landed(void *fake) {
#ifdef EMU_FIBER_NOTES
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(fake, &bottom, &size);
    if (from_main) main_bottom = bottom, main_size = size;
#else
    (void)fake;
#endif
    if (have_zombie) free_stacks.push_back(zombie), have_zombie = false;
}

__attribute__((no_sanitize_address, noreturn)) void fiber_main();

void init_fiber(Fiber *f) {
    f->stack = get_stack();
#ifdef EMU_FAST_SWITCH
    if (!csr_word) {
        uint16_t cw;
        asm volatile("fnstcw %0" : "=m"(cw));
        csr_word = _mm_getcsr() | (uint64_t)cw << 32;
    }
    // a frame that emu_switch "returns" into fiber_main from (rsp % 16 == 8 at entry)
    uint64_t *sp = (uint64_t *)(((uintptr_t)f->stack.lo + f->stack.size) & ~(uintptr_t)15);
    *--sp = 0;                    // fiber_main's return address (it never returns)
    *--sp = (uint64_t)fiber_main; // emu_switch's ret
    for (int i = 0; i < 6; i++) *--sp = 0; // rbp rbx r12-r15
    *--sp = csr_word;
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack.lo;
    f->uc.uc_stack.ss_size = f->stack.size;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())fiber_main, 0);
#endif
}

// from the running context (fiber `from`, or the host when null) to fiber `to` (or the
// host when null); `finished`: `from` returned and never runs again
__attribute__((no_sanitize_address)) void switch_to(Fiber *from, Fiber *to, bool finished) {
    if (to && to->state == NEW) init_fiber(to);
    if (to) to->state = RUN, tid = to->tid;
    cur = to;
    from_main = !from;
    switches++;
#ifdef EMU_FIBER_NOTES
    void **fake = finished ? nullptr : from ? &from->fake_stack : &main_fake;
    if (to) __sanitizer_start_switch_fiber(fake, to->stack.lo, to->stack.size);
    else __sanitizer_start_switch_fiber(fake, main_bottom, main_size);
#else
    (void)finished;
#endif
#ifdef EMU_FAST_SWITCH
    emu_switch(from ? &from->sp : &main_sp, to ? to->sp : main_sp);
#else
    swapcontext(from ? &from->uc : &main_uc, to ? &to->uc : &main_uc);
#endif
#ifdef EMU_FIBER_NOTES
    landed(from ? from->fake_stack : main_fake);
#else
    landed(nullptr);
#endif
}

EMU_NOSAN [[noreturn]] void deadlock() {
    std::string msg;
    char line[512];
    std::map<std::string, unsigned> groups;
    for (unsigned i = 0; i < blk.n; i++) {
        const Fiber &f = fibers[i];
        if (f.state == DONE) continue;
        if (f.state == WAIT_BAR) snprintf(line, sizeof line, "at __syncthreads %s:%d", f.file, f.line);
        else
            snprintf(line, sizeof line, "at %s %s:%d (warp %u, mask 0x%08x)", f.what, f.file, f.line,
                     f.lin >> 5, f.wmask);
        groups[line]++;
    }
    for (auto &g : groups) {
        snprintf(line, sizeof line, "\n    %u thread%s wait %s", g.second, g.second == 1 ? "" : "s",
                 g.first.c_str());
        msg += line;
    }
    fail("deadlock: no thread of the block can go on (%u of %u returned):%s", blk.n - blk.live, blk.n,
         msg.c_str());
}

// the first thread after `f` (cyclically) that can go on; none: deadlock
EMU_NOSAN Fiber *next_after(const Fiber *f) {
    const unsigned n = blk.n;
    for (unsigned k = 0, i = f->lin; k < n; k++) {
        if (++i == n) i = 0;
        Fiber &g = fibers[i];
        if (g.state == NEW || (g.state == WAIT_BAR && g.bar_gen != blk.gen) ||
            (g.state == WAIT_WARP && warp_ready(g)))
            return &g;
    }
    deadlock();
}

// the running thread waits (state WAIT_BAR / WAIT_WARP) until another makes it able to go on
EMU_NOSAN void wait(State s) {
    Fiber *f = cur;
    f->state = s;
    switch_to(f, next_after(f), false);
}

__attribute__((no_sanitize_address, noreturn)) void fiber_main() {
    landed(nullptr);
    Fiber *f = cur;
    (*blk.body)();
    thread_exit(f);
    f->state = DONE;
    zombie = f->stack, have_zombie = true;
    switch_to(f, blk.live ? next_after(f) : nullptr, true);
    __builtin_unreachable();
}

void run_block() {
    const unsigned n = blk.n, bx = bdim.x, by = bdim.y;
    for (unsigned i = 0; i < n; i++) {
        Fiber &f = fibers[i];
        f.state = NEW;
        f.lin = i;
        f.tid = {i % bx, i / bx % by, i / (bx * by)};
    }
    for (unsigned w = 0; w < (n + 31) / 32; w++) {
        Warp &W = warps[w];
        unsigned lanes = n - 32 * w >= 32 ? 32 : n - 32 * w;
        W.present = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1;
        W.exited = 0;
        W.nmask = 0;
    }
    blk.live = n, blk.arrived = 0, blk.gen = 0;
    switch_to(nullptr, &fibers[0], false); // back when every thread has returned
}

EMU_NOSAN void thread_exit(Fiber *f) {
    blk.live--;
    if (blk.arrived && blk.arrived == blk.live) blk.gen++, blk.arrived = 0; // returned threads no longer count
    Warp &w = warps[f->lin >> 5];
    unsigned l = f->lin & 31;
    w.exited |= 1u << l;
    for (int i = 0; i < w.nmask; i++) // lanes of its mask wait for it at an open collective?
        if ((w.masks[i] >> l & 1) && w.arrived[i] && w.cnt[l][i] == w.done[i]) {
            unsigned m = 0, p = w.done[i] & 1;
            while (!(w.masks[i] >> m & 1) || w.cnt[m][i] == w.done[i]) m++;
            fail("lane %u of warp %u returned, but lane %u waits for it at %s %s:%d (mask 0x%08x)", l,
                 f->lin >> 5, m, w.what[i][p][m], w.file[i][p][m], w.line[i][p][m], w.masks[i]);
        }
}

std::map<const void *, size_t> smem_optin; // cudaFuncSetAttribute(MaxDynamicSharedMemorySize)

void *dyn_current; // the running launch's dynamic shared memory

void print_stats() {
    std::vector<std::pair<std::string, Stats>> v(stats->begin(), stats->end());
    std::sort(v.begin(), v.end(), [](auto &a, auto &b) { return a.second.seconds > b.second.seconds; });
    fprintf(stderr, "CUDA emulation: %-40s %9s %12s %12s %8s\n", "kernel", "launches", "threads", "switches", "seconds");
    for (auto &k : v)
        fprintf(stderr, "CUDA emulation: %-40s %9lu %12lu %12lu %8.2f\n", k.first.c_str(), k.second.launches,
                k.second.threads, k.second.switches, k.second.seconds);
}

void run_grid(const Site &site, dim3 grid, dim3 block, size_t smem, const std::function<void()> &body) {
    cur_site = &site;
    gdim = grid, bdim = block;
    blk.n = block.x * block.y * block.z;
    blk.body = &body;
    void *dyn = malloc(smem); // exactly smem bytes: ASan sees accesses beyond
    dyn_current = dyn;
    static int want_stats = -1;
    if (want_stats < 0 && (want_stats = getenv("PLAB_EMU_STATS") != nullptr)) {
        stats = new std::map<std::string, Stats>;
        atexit(print_stats);
    }
    timespec t0;
    if (stats) clock_gettime(CLOCK_MONOTONIC, &t0), switches = 0;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                bid = {x, y, z};
                block_serial++;
                static_smem = 0;
                if (smem) memset(dyn, 0xff, smem);
                run_block();
                if (static_smem > SMEM_DEFAULT)
                    fail("%zu bytes of static __shared__ memory: CUDA allows 48 KiB", static_smem);
                if (static_smem + smem > SMEM_OPTIN)
                    fail("%zu bytes of static + %zu of dynamic shared memory: the GPU has %zu per block",
                         static_smem, smem, SMEM_OPTIN);
            }
    free(dyn);
    dyn_current = nullptr;
    if (stats) {
        timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        Stats &st = (*stats)[site.name];
        st.launches++;
        st.threads += (unsigned long)blk.n * grid.x * grid.y * grid.z;
        st.switches += switches;
        st.seconds += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    cur_site = nullptr;
}

} // namespace

void *dyn_smem() { return dyn_current; }

namespace {
EMU_NOSAN [[noreturn]] void fail(const char *fmt, ...) {
    fflush(stdout);
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "CUDA emulation: %s\n", msg);
    failing = true;
    if (cur_site)
        fprintf(stderr, "  in kernel %s launched at %s:%d, grid (%u,%u,%u) block (%u,%u,%u), blockIdx (%u,%u,%u)%s",
                cur_site->name, cur_site->file, cur_site->line, gdim.x, gdim.y, gdim.z, bdim.x, bdim.y,
                bdim.z, bid.x, bid.y, bid.z, cur ? "" : "\n");
    if (cur_site && cur) fprintf(stderr, ", threadIdx (%u,%u,%u)\n", tid.x, tid.y, tid.z);
    fflush(stderr);
    abort();
}
} // namespace

// ---- kernel launches ------------------------------------------------------------------------------

// when a sanitizer stops the program: which kernel, block and thread it was in
static void where() {
    if (cur_site && !failing)
        fprintf(stderr, "CUDA emulation: stopped in kernel %s launched at %s:%d, blockIdx (%u,%u,%u), threadIdx (%u,%u,%u)\n",
                cur_site->name, cur_site->file, cur_site->line, bid.x, bid.y, bid.z, tid.x, tid.y, tid.z);
}

void launch(const Site &site, const void *fn, dim3 g, dim3 b, size_t smem, cudaStream_t s,
            std::function<void()> body) {
    unsigned long threads = (unsigned long)b.x * b.y * b.z;
    const char *bad = nullptr;
    cudaError_t err = cudaErrorInvalidConfiguration;
    if (!g.x || !g.y || !g.z) bad = "a grid dimension is 0";
    else if (g.x > 2147483647u || g.y > 65535 || g.z > 65535) bad = "the grid is too large";
    else if (!threads) bad = "a block dimension is 0";
    else if (b.x > 1024 || b.y > 1024 || b.z > 64 || threads > 1024) bad = "more than 1024 threads per block";
    else {
        auto it = smem_optin.find(fn);
        size_t allowed = it != smem_optin.end() && it->second > SMEM_DEFAULT ? it->second : SMEM_DEFAULT;
        if (smem > allowed) bad = "too much dynamic shared memory (cudaFuncSetAttribute opts in above 48 KiB)";
        err = cudaErrorInvalidValue;
    }
    if (bad) {
        fprintf(stderr, "CUDA emulation: launch of %s at %s:%d with grid (%u,%u,%u), block (%u,%u,%u), %zu "
                        "bytes of shared memory fails: %s\n",
                site.name, site.file, site.line, g.x, g.y, g.z, b.x, b.y, b.z, smem, bad);
        set_error(err);
        return;
    }
    static pthread_t host = pthread_self(); // the emulation keeps one device state: one host thread
    if (!pthread_equal(host, pthread_self()))
        fail("launch of %s at %s:%d from a second host thread (the emulation serves one)", site.name,
             site.file, site.line);
    static bool hooked;
    if (!hooked) {
#ifdef EMU_ASAN
        __sanitizer_set_death_callback(where);
#endif
        signal(SIGABRT, [](int) { where(); });
        hooked = true;
    }
    Site keep = site; // the strings are literals
    submit(s, [keep, g, b, smem, body] { run_grid(keep, g, b, smem, body); });
}

void check_kernel_pointer(const Site &site, int arg, const void *p) {
    if (p && !alloc_of(p))
        fail("kernel %s launched at %s:%d: pointer argument %d (%p) is not device memory", site.name,
             site.file, site.line, arg + 1, p);
}

// ---- warp collectives -----------------------------------------------------------------------------

EMU_NOSAN unsigned lane() {
    if (!cur) fail("a warp intrinsic outside a kernel");
    return cur->lin & 31;
}

EMU_NOSAN void check_width(int width, const char *what, const char *file, int line) {
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail("%s at %s:%d: width %d is not a power of 2 up to 32", what, file, line, width);
}

EMU_NOSAN const unsigned char *collective(unsigned mask, const void *mine, size_t bytes, const char *what,
                                          const char *file, int line, bool *last) {
    Fiber *f = cur;
    if (!f) fail("%s at %s:%d outside a kernel", what, file, line);
    unsigned l = f->lin & 31;
    Warp &w = warps[f->lin >> 5];
    if (!(mask >> l & 1)) fail("%s at %s:%d: lane %u calls it with mask 0x%08x, which leaves it out", what, file, line, l, mask);
    if (mask & ~w.present)
        fail("%s at %s:%d: mask 0x%08x names lanes that do not exist (a block of %u threads)", what, file,
             line, mask, blk.n);
    int i = 0;
    while (i < w.nmask && w.masks[i] != mask) i++;
    if (i == w.nmask) {
        if (w.nmask == MASKS) fail("%s at %s:%d: more than %d distinct masks in one warp", what, file, line, MASKS);
        w.masks[i] = mask, w.need[i] = __builtin_popcount(mask);
        w.arrived[i] = w.done[i] = 0;
        for (unsigned m = 0; m < 32; m++) w.cnt[m][i] = 0;
        w.nmask++;
    }
    const unsigned c = w.cnt[l][i], p = c & 1;
    if (c != w.done[i]) fail("%s at %s:%d: emulator bookkeeping (lane %u at %u, mask at %u)", what, file, line, l, c, w.done[i]);
    size_t k = 0; // a few words: no call into the sanitizer's memcpy
    for (; k + 4 <= bytes; k += 4) __builtin_memcpy(w.slot[i][p][l] + k, (const unsigned char *)mine + k, 4);
    for (; k < bytes; k++) w.slot[i][p][l][k] = ((const unsigned char *)mine)[k];
    w.file[i][p][l] = file, w.line[i][p][l] = line, w.what[i][p][l] = what;
    w.cnt[l][i] = c + 1;
    if (mask & w.exited)
        for (unsigned m = 0; m < 32; m++)
            if ((mask & w.exited) >> m & 1 && w.cnt[m][i] <= c)
                fail("%s at %s:%d (mask 0x%08x): lane %u of the mask has returned", what, file, line, mask, m);
    if (last) *last = false;
    if (++w.arrived[i] == w.need[i]) { // the last lane: the collective completes
        w.arrived[i] = 0, w.done[i]++;
        for (unsigned m = 0; m < 32; m++)
            if ((mask >> m & 1) && (w.line[i][p][m] != line ||
                                    (w.file[i][p][m] != file && strcmp(w.file[i][p][m], file))))
                fail("lanes %u and %u of warp %u meet in one collective from different places: %s %s:%d "
                     "and %s %s:%d",
                     l, m, f->lin >> 5, what, file, line, w.what[i][p][m], w.file[i][p][m], w.line[i][p][m]);
        if (last) *last = true;
    } else {
        f->widx = i, f->wneed = c + 1, f->wmask = mask;
        f->what = what, f->file = file, f->line = line;
        wait(WAIT_WARP);
    }
    return &w.slot[i][p][0][0];
}

EMU_NOSAN const unsigned char *slot_of(const unsigned char *slots, unsigned mask, unsigned from, const char *what,
                             const char *file, int line) {
    if (!(mask >> from & 1))
        fail("%s at %s:%d: reads lane %u, which is not in the mask 0x%08x", what, file, line, from, mask);
    return slots + SLOT * from;
}

} // namespace emu

EMU_NOSAN void emu_syncthreads(const char *file, int line) {
    using namespace emu;
    Fiber *f = cur;
    if (!f) fail("__syncthreads at %s:%d outside a kernel", file, line);
    if (blk.arrived == 0) blk.file = file, blk.line = line;
    else if (blk.line != line || (blk.file != file && strcmp(blk.file, file)))
        fail("threads of one block wait at different __syncthreads: %s:%d and %s:%d", blk.file, blk.line,
             file, line);
    f->file = file, f->line = line, f->what = "__syncthreads";
    if (++blk.arrived == blk.live) {
        blk.gen++, blk.arrived = 0;
        return;
    }
    f->bar_gen = blk.gen;
    wait(WAIT_BAR);
}

unsigned __ballot_sync(unsigned mask, int pred, const char *file, int line) {
    int mine = pred != 0;
    const unsigned char *s = emu::collective(mask, &mine, sizeof mine, "__ballot_sync", file, line);
    unsigned r = 0;
    for (unsigned m = 0; m < 32; m++) {
        int v;
        memcpy(&v, s + emu::SLOT * m, sizeof v);
        if ((mask >> m & 1) && v) r |= 1u << m;
    }
    return r;
}

// ---- mma.sync (PTX ISA, "Matrix Fragments for mma.m16n8k8 / m16n8k16", .bf16) -------------------
// groupID g = lane >> 2, threadID_in_group t = lane % 4; the lower 16 bits of a register hold
// the lower-index element. C/D: c0, c1 = row g, cols 2t, 2t+1; c2, c3 = row g+8.
// Every lane deposits its A and B registers and its accumulators; the last lane to arrive
// multiplies the whole tile (fp32 products of bf16, summed in k order) and leaves each
// lane's 4 results in its slot (bytes 48..63).
namespace {
constexpr int RES = 48;
float bf_half(uint32_t r, int hi) { return emu_bf_bits2f((unsigned short)(hi ? r >> 16 : r & 0xffff)); }
uint32_t reg_of(const unsigned char *slots, unsigned lane, int reg) {
    uint32_t v;
    memcpy(&v, slots + emu::SLOT * lane + 4 * reg, 4);
    return v;
}
// A (16 x K, row-major) and B (K x 8, column n at B + 16 n) unpacked; D += A B per lane
void mma_tile(unsigned char *slots, int K, int acc_reg, const float *A, const float *B) {
    for (unsigned l = 0; l < 32; l++) {
        const unsigned g = l >> 2, t = l & 3;
        float d[4];
        memcpy(d, slots + emu::SLOT * l + 4 * acc_reg, sizeof d);
        for (int e = 0; e < 4; e++) {
            const unsigned r = g + 8 * (e >> 1), n = 2 * t + (e & 1);
            float acc = d[e];
            for (int k = 0; k < K; k++) acc += A[r * K + k] * B[16 * n + k];
            d[e] = acc;
        }
        memcpy(slots + emu::SLOT * l + RES, d, sizeof d);
    }
}
void mma_result(float d[4], const unsigned char *slots) { memcpy(d, slots + emu::SLOT * emu::lane() + RES, 16); }
} // namespace

void emu_mma_m16n8k8_bf16(float d[4], uint32_t a0, uint32_t a1, uint32_t b, const char *file, int line) {
    uint32_t mine[7] = {a0, a1, b};
    memcpy(mine + 3, d, 16);
    bool last;
    const unsigned char *s = emu::collective(0xffffffffu, mine, sizeof mine, "mma.m16n8k8", file, line, &last);
    if (last) {
        // A(r, k): lane (r % 8) * 4 + k / 2, register a0 (rows 0-7) or a1 (rows 8-15);
        // B(k, n): lane n * 4 + k / 2, register b; half k % 2
        float A[16 * 8], B[8 * 16];
        for (unsigned r = 0; r < 16; r++)
            for (int k = 0; k < 8; k++) A[r * 8 + k] = bf_half(reg_of(s, (r & 7) * 4 + k / 2, r >= 8), k & 1);
        for (unsigned n = 0; n < 8; n++)
            for (int k = 0; k < 8; k++) B[16 * n + k] = bf_half(reg_of(s, n * 4 + k / 2, 2), k & 1);
        mma_tile(const_cast<unsigned char *>(s), 8, 3, A, B);
    }
    mma_result(d, s);
}

namespace {
// the collective of an mma with four A registers and two B registers (m16n8k16 .bf16, m16n8k8
// .tf32): element(s, A, B) unpacks the tile's A (16 x K) and B (K x 8) from the slots
template <int K, class Unpack>
void mma_4x2(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, const char *what, const char *file,
             int line, Unpack unpack) {
    uint32_t mine[10] = {a[0], a[1], a[2], a[3], b0, b1};
    memcpy(mine + 6, d, 16);
    bool last;
    const unsigned char *s = emu::collective(0xffffffffu, mine, sizeof mine, what, file, line, &last);
    if (last) {
        float A[16 * K], B[8 * 16];
        unpack(s, A, B);
        mma_tile(const_cast<unsigned char *>(s), K, 6, A, B);
    }
    mma_result(d, s);
}
} // namespace

void emu_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, const char *file,
                           int line) {
    // A(r, k): lane (r % 8) * 4 + (k % 8) / 2, register a0 (row g, k < 8), a1 (row g+8, k < 8),
    // a2 (row g, k >= 8), a3 (row g+8, k >= 8); B(k, n): lane n * 4 + (k % 8) / 2, b0 (k < 8)
    // or b1 (k >= 8); half k % 2
    mma_4x2<16>(d, a, b0, b1, "mma.m16n8k16", file, line, [](const unsigned char *s, float *A, float *B) {
        for (unsigned r = 0; r < 16; r++)
            for (int k = 0; k < 16; k++)
                A[r * 16 + k] = bf_half(reg_of(s, (r & 7) * 4 + (k & 7) / 2, (r >= 8) + 2 * (k >= 8)), k & 1);
        for (unsigned n = 0; n < 8; n++)
            for (int k = 0; k < 16; k++) B[16 * n + k] = bf_half(reg_of(s, n * 4 + (k & 7) / 2, 4 + (k >= 8)), k & 1);
    });
}

void emu_mma_m16n8k8_tf32(float d[4], const uint32_t a[4], uint32_t b0, uint32_t b1, const char *file,
                          int line) {
    // A(r, k): lane (r % 8) * 4 + k % 4, register a0 (row g, k < 4), a1 (row g+8), a2 (row g,
    // k >= 4), a3 (row g+8, k >= 4); B(k, n): lane n * 4 + k % 4, b0 (k < 4) or b1; the low 13
    // bits of each operand ignored
    auto tf = [](uint32_t u) {
        u &= 0xffffe000u;
        float f;
        memcpy(&f, &u, 4);
        return f;
    };
    mma_4x2<8>(d, a, b0, b1, "mma.m16n8k8.tf32", file, line, [&](const unsigned char *s, float *A, float *B) {
        for (unsigned r = 0; r < 16; r++)
            for (int k = 0; k < 8; k++) A[r * 8 + k] = tf(reg_of(s, (r & 7) * 4 + k % 4, (r >= 8) + 2 * (k >= 4)));
        for (unsigned n = 0; n < 8; n++)
            for (int k = 0; k < 8; k++) B[16 * n + k] = tf(reg_of(s, n * 4 + k % 4, 4 + (k >= 4)));
    });
}

// ---- runtime API ----------------------------------------------------------------------------------
using namespace emu;

cudaError_t cudaGetLastError(void) {
    cudaError_t e = last_error;
    last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error; }
const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    }
    return "cudaErrorUnknown";
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureWrongThread: return "attempt to terminate a thread-local capture sequence from another thread";
    }
    return "unknown error";
}

cudaError_t cudaGetDeviceCount(int *n) {
    banner();
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : set_error(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *device) {
    *device = 0;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = (int)SMEM_DEFAULT; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = (int)SMEM_OPTIN; break;
    default: return set_error(cudaErrorInvalidValue);
    }
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) {
    return capturing ? set_error(cudaErrorStreamCaptureUnsupported) : cudaSuccess;
}

// Fresh device memory is NaN bytes (0xff): what a kernel reads before anything wrote it
// poisons the results instead of passing as zeros.
cudaError_t cudaMalloc(void **p, size_t bytes) {
    if (capturing) return set_error(cudaErrorStreamCaptureUnsupported);
    *p = nullptr;
    if (!bytes) return cudaSuccess;
    void *m = nullptr;
    if (posix_memalign(&m, 256, bytes)) return set_error(cudaErrorMemoryAllocation);
    memset(m, 0xff, bytes);
    allocs[(uintptr_t)m] = bytes;
    *p = m;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    if (capturing) return set_error(cudaErrorStreamCaptureUnsupported);
    if (!p) return cudaSuccess;
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end()) return set_error(cudaErrorInvalidDevicePointer);
    allocs.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    const bool ddev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool sdev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if (kind > cudaMemcpyDefault) return set_error(cudaErrorInvalidMemcpyDirection);
    if (kind != cudaMemcpyDefault) {
        if (ddev) need_device(dst, bytes, "cudaMemcpyAsync destination");
        else if (alloc_of(dst)) fail("cudaMemcpyAsync: the destination %p of a copy to the host is device memory", dst);
        if (sdev) need_device(src, bytes, "cudaMemcpyAsync source");
        else if (alloc_of(src)) fail("cudaMemcpyAsync: the source %p of a copy from the host is device memory", src);
    }
    submit(s, [=] { memmove(dst, src, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    if (capturing) return set_error(cudaErrorStreamCaptureUnsupported);
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    need_device(p, bytes, "cudaMemsetAsync");
    submit(s, [=] { memset(p, value, bytes); });
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    if (capturing) return set_error(cudaErrorStreamCaptureUnsupported);
    return cudaMemsetAsync(p, value, bytes, nullptr);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = new EmuStream;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    if (!s) return set_error(cudaErrorInvalidResourceHandle);
    if (s->status != cudaStreamCaptureStatusNone) capturing--;
    delete s;
    return cudaSuccess;
}
// Work ran when it was enqueued; synchronising a capturing stream breaks the capture.
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    EmuStream *st = stream_of(s);
    if (st->status != cudaStreamCaptureStatusNone) {
        st->status = cudaStreamCaptureStatusInvalidated;
        return set_error(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void)mode;
    if (!s) return set_error(cudaErrorStreamCaptureUnsupported); // the legacy stream cannot capture
    if (s->status != cudaStreamCaptureStatusNone) return set_error(cudaErrorInvalidValue);
    s->status = cudaStreamCaptureStatusActive;
    s->rec.clear();
    capturing++;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    if (!s || s->status == cudaStreamCaptureStatusNone) return set_error(cudaErrorInvalidValue);
    bool ok = s->status == cudaStreamCaptureStatusActive;
    s->status = cudaStreamCaptureStatusNone;
    capturing--;
    *g = nullptr;
    if (!ok) {
        s->rec.clear();
        return set_error(cudaErrorStreamCaptureInvalidated);
    }
    *g = new EmuGraph{std::move(s->rec)};
    s->rec.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamIsCapturing(cudaStream_t s, cudaStreamCaptureStatus *status) {
    *status = stream_of(s)->status;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *e, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    if (!g) return set_error(cudaErrorInvalidValue);
    *e = new EmuGraphExec{g->ops};
    return cudaSuccess;
}
cudaError_t cudaGraphUpload(cudaGraphExec_t e, cudaStream_t s) {
    (void)s;
    return e ? cudaSuccess : set_error(cudaErrorInvalidValue);
}
// replays the recorded work in order
cudaError_t cudaGraphLaunch(cudaGraphExec_t e, cudaStream_t s) {
    if (!e) return set_error(cudaErrorInvalidValue);
    std::vector<Op> ops = e->ops;
    submit(s, [ops] {
        for (const Op &op : ops) op();
    });
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t e) {
    delete e;
    return cudaSuccess;
}

// Pinned host memory is host memory here (not in allocs: kernels may not read it).
cudaError_t cudaMallocHost(void **p, size_t bytes) {
    if (capturing) return set_error(cudaErrorStreamCaptureUnsupported);
    *p = malloc(bytes ? bytes : 1);
    return *p ? cudaSuccess : set_error(cudaErrorMemoryAllocation);
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
struct EmuEvent {
    int recorded;
};
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned flags) {
    (void)flags;
    *e = new EmuEvent{0};
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    if (stream_of(s)->status != cudaStreamCaptureStatusNone) return set_error(cudaErrorStreamCaptureUnsupported);
    e->recorded = 1;
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void *fn, cudaFuncAttribute attr, int value) {
    if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
        if (value < 0 || (size_t)value > SMEM_OPTIN) return set_error(cudaErrorInvalidValue);
        smem_optin[fn] = (size_t)value;
    }
    return cudaSuccess;
}

// ---- cuBLAS -------------------------------------------------------------------------------------

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = new EmuBlas;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (bytes) need_device(ws, bytes, "cublasSetWorkspace");
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    }
    return "CUBLAS_STATUS_UNKNOWN";
}

namespace {
float round_tf32(float f) { // 10 mantissa bits, to nearest even
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return f;
    u += 0xfffu + ((u >> 13) & 1u);
    u &= 0xffffe000u;
    memcpy(&f, &u, 4);
    return f;
}
float round_bf16(float f) { return emu_bf_bits2f(emu_f2bf_bits(f)); }

// elements spanned by a column-major rows x cols matrix with leading dimension ld
size_t extent(int rows, int cols, int ld) { return rows && cols ? (size_t)(cols - 1) * ld + rows : 0; }

// the operand as the compute type reads it: rounded to tf32 / bf16 (mode 1 / 2)
// (bf16 storage: widened to fp32, exact)
const float *operand(const void *p, cudaDataType t, size_t n, int mode, std::vector<float> &tmp) {
    if (t == CUDA_R_16BF) {
        const __nv_bfloat16 *x = (const __nv_bfloat16 *)p;
        tmp.resize(n);
        for (size_t i = 0; i < n; i++) tmp[i] = (float)x[i];
        return tmp.data();
    }
    const float *x = (const float *)p;
    if (!mode) return x;
    tmp.resize(n);
    for (size_t i = 0; i < n; i++) tmp[i] = mode == 1 ? round_tf32(x[i]) : round_bf16(x[i]);
    return tmp.data();
}

cublasStatus_t gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                    const void *alpha, const void *A, cudaDataType at, int lda, long long sA, const void *B,
                    cudaDataType bt, int ldb, long long sB, const void *beta, void *C, cudaDataType ct,
                    int ldc, long long sC, int batch, cublasComputeType_t compute, const char *what) {
    if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
    // fp32 or bf16 storage (bf16 A and B together, as cuBLAS pairs them), fp32 arithmetic
    auto known = [](cudaDataType t) { return t == CUDA_R_32F || t == CUDA_R_16BF; };
    if (!known(at) || !known(bt) || !known(ct) || at != bt) return CUBLAS_STATUS_NOT_SUPPORTED;
    const int ea = at == CUDA_R_16BF ? 2 : 4, ec = ct == CUDA_R_16BF ? 2 : 4;
    int mode;
    switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC: mode = 0; break;
    case CUBLAS_COMPUTE_32F_FAST_TF32: mode = 1; break;
    case CUBLAS_COMPUTE_32F_FAST_16BF: mode = 2; break;
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    static const bool round = getenv("PLAB_EMU_GEMM") && !strcmp(getenv("PLAB_EMU_GEMM"), "round");
    if (!round) mode = 0;
    if (ta == CUBLAS_OP_C) ta = CUBLAS_OP_T; // real data
    if (tb == CUBLAS_OP_C) tb = CUBLAS_OP_T;
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T))
        return CUBLAS_STATUS_INVALID_VALUE;
    const int ra = ta == CUBLAS_OP_N ? m : k, ca = ta == CUBLAS_OP_N ? k : m;
    const int rb = tb == CUBLAS_OP_N ? k : n, cb = tb == CUBLAS_OP_N ? n : k;
    if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max(1, ra) || ldb < std::max(1, rb) ||
        ldc < std::max(1, m))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!m || !n || !batch) return CUBLAS_STATUS_SUCCESS;
    const float al = *(const float *)alpha, be = *(const float *)beta; // host scalars, read now
    const size_t na = extent(ra, ca, lda), nb = extent(rb, cb, ldb), nc = extent(m, n, ldc);
    const char *a = (const char *)A, *b = (const char *)B;
    char *c = (char *)C;
    for (long long i : {0LL, (long long)batch - 1}) { // strides are >= 0: first and last bound all
        char w[128];
        snprintf(w, sizeof w, "%s A (batch %lld)", what, i);
        if (k) need_device(a + i * sA * ea, na * ea, w);
        snprintf(w, sizeof w, "%s B (batch %lld)", what, i);
        if (k) need_device(b + i * sB * ea, nb * ea, w);
        snprintf(w, sizeof w, "%s C (batch %lld)", what, i);
        need_device(c + i * sC * ec, nc * ec, w);
    }
    submit(h->stream, [=] {
        std::vector<float> ta_, tb_, tc_;
        for (int i = 0; i < batch; i++) {
            const float *ai = operand(a + i * sA * ea, at, na, mode, ta_);
            const float *bi = operand(b + i * sB * ea, bt, nb, mode, tb_);
            float *ci = ct == CUDA_R_32F ? (float *)(c + i * sC * ec) : nullptr;
            __nv_bfloat16 *cb16 = (__nv_bfloat16 *)(c + i * sC * ec);
            if (!ci) { // bf16 C: computed in fp32, rounded once as it is stored
                tc_.resize(nc);
                for (size_t e = 0; e < nc; e++) tc_[e] = (float)cb16[e];
                ci = tc_.data();
            }
            cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                        tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, al, ai, lda, bi, ldb, be,
                        ci, ldc);
            if (ct == CUDA_R_16BF)
                for (int col = 0; col < n; col++)
                    for (int row = 0; row < m; row++) {
                        size_t e = (size_t)col * ldc + row;
                        cb16[e] = __nv_bfloat16(ci[e]);
                    }
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}
} // namespace

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                            int k, const void *alpha, const void *A, cudaDataType Atype, int lda,
                            const void *B, cudaDataType Btype, int ldb, const void *beta, void *C,
                            cudaDataType Ctype, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo) {
    (void)algo;
    return gemm(h, ta, tb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1,
                compute, "cublasGemmEx");
}
cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                          int m, int n, int k, const void *alpha, const void *A,
                                          cudaDataType Atype, int lda, long long strideA, const void *B,
                                          cudaDataType Btype, int ldb, long long strideB,
                                          const void *beta, void *C, cudaDataType Ctype, int ldc,
                                          long long strideC, int batch, cublasComputeType_t compute,
                                          cublasGemmAlgo_t algo) {
    (void)algo;
    if (strideA < 0 || strideB < 0 || strideC < 0) return CUBLAS_STATUS_INVALID_VALUE;
    return gemm(h, ta, tb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype,
                ldc, strideC, batch, compute, "cublasGemmStridedBatchedEx");
}
