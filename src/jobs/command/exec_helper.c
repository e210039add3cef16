/*
 * opsd-exec: how the daemon starts a `command` job's program without
 * forking itself.
 *
 * Forking the daemon copies the page tables of a large multi-threaded
 * process for every job, only to exec at once. posix_spawn (vfork-like,
 * nothing copied) cannot run code between the two, and the program must
 * die with the daemon (PR_SET_PDEATHSIG) rather than run on unsupervised.
 * So the daemon posix_spawns this tiny static program, which arms the
 * death signal, checks the daemon is still its parent, and execs the real
 * program in its place: same pid, same process group, same environment,
 * same file descriptors.
 *
 * usage: opsd-exec DAEMON_PID TAG PROGRAM ARGV0 [ARGS...]
 *        opsd-exec --probe        (exits 0: the daemon checks it can run us)
 *
 * A failure is one line on stderr starting with "opsd-exec[TAG]: " and
 * exit status 127; TAG is the daemon's own random word, so a program that
 * happens to print something similar is not mistaken for a start failure.
 * A file with no #! line that the kernel refuses (ENOEXEC) is run with
 * /bin/sh, as execvp and the shell do. A failed system call is reported
 * as "errno N" (the daemon turns N into its text).
 *
 * One logic (`run` below), two ways to reach the kernel (build.rs picks
 * the first that compiles):
 * - OPSD_EXEC_NOLIBC (x86-64 and aarch64 Linux, 64-bit pointers): no C
 *   library at all, its own _start and raw system calls. A libc's start-up
 *   (CPU feature probes, which trap to the hypervisor in a VM, ifunc
 *   resolution, stdio) cost as much as the job's whole program for a short
 *   job; this build does four system calls before the exec.
 * - otherwise the same calls through the C library, static or dynamic.
 */
#define PR_SET_PDEATHSIG_ 1
#define SIGKILL_ 9
#define ENOEXEC_ 8

/* The system calls `run` needs; each returns the kernel's result, a
 * negative errno on failure. */
static long sys_write(const char *s, unsigned long n);
static __attribute__((noreturn)) void sys_exit(int code);
static long sys_pdeathsig_kill(void);
static long sys_getppid(void);
static long sys_execve(const char *path, char **argv, char **envp);

#ifdef OPSD_EXEC_NOLIBC

#if defined(__ILP32__)
#error "OPSD_EXEC_NOLIBC needs 64-bit pointers (not x32 or ILP32)"
#elif defined(__x86_64__)
#define SYS_write_ 1
#define SYS_getppid_ 110
#define SYS_prctl_ 157
#define SYS_execve_ 59
#define SYS_exit_group_ 231
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
/* The kernel enters with the stack pointer at argc; the ABI wants it
 * 16-byte aligned before the call. */
__asm__(".text\n.global _start\n_start:\n"
        "  xor %rbp, %rbp\n  mov %rsp, %rdi\n  and $-16, %rsp\n  call start_c\n  hlt\n");
#elif defined(__aarch64__)
#define SYS_write_ 64
#define SYS_getppid_ 173
#define SYS_prctl_ 167
#define SYS_execve_ 221
#define SYS_exit_group_ 94
static long sys3(long n, long a, long b, long c) {
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    __asm__ volatile("svc #0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2) : "memory");
    return x0;
}
__asm__(".text\n.global _start\n_start:\n  mov x29, #0\n  mov x0, sp\n  bl start_c\n  brk #0\n");
#else
#error "OPSD_EXEC_NOLIBC supports x86-64 and aarch64 only"
#endif

static long sys_write(const char *s, unsigned long n) { return sys3(SYS_write_, 2, (long)s, (long)n); }
static void sys_exit(int code) {
    for (;;)
        sys3(SYS_exit_group_, code, 0, 0);
}
static long sys_pdeathsig_kill(void) { return sys3(SYS_prctl_, PR_SET_PDEATHSIG_, SIGKILL_, 0); }
static long sys_getppid(void) { return sys3(SYS_getppid_, 0, 0, 0); }
static long sys_execve(const char *path, char **argv, char **envp) {
    return sys3(SYS_execve_, (long)path, (long)argv, (long)envp);
}

#else /* through the C library */

#include <errno.h>
#include <sys/prctl.h>
#include <unistd.h>

static long sys_write(const char *s, unsigned long n) { return write(2, s, n); }
static void sys_exit(int code) { _exit(code); }
static long sys_pdeathsig_kill(void) {
    return prctl(PR_SET_PDEATHSIG_, SIGKILL_) == 0 ? 0 : -errno;
}
static long sys_getppid(void) { return getppid(); }
static long sys_execve(const char *path, char **argv, char **envp) {
    execve(path, argv, envp);
    return -errno;
}

#endif

static unsigned long len(const char *s) {
    unsigned long n = 0;
    while (s[n])
        n++;
    return n;
}

static void put(const char *s) { sys_write(s, len(s)); }

/* "opsd-exec[TAG]: WHAT[ N]\n" on stderr, then exit 127. */
static __attribute__((noreturn)) void fail(const char *tag, const char *what, long errno_) {
    char num[24];
    int i = sizeof num;
    num[--i] = 0;
    num[--i] = '\n';
    if (errno_ >= 0) {
        do {
            num[--i] = (char)('0' + errno_ % 10);
            errno_ /= 10;
        } while (errno_ > 0);
        num[--i] = ' ';
    }
    put("opsd-exec[");
    put(tag);
    put("]: ");
    put(what);
    put(&num[i]);
    sys_exit(127);
}

static int same(const char *a, const char *b) {
    while (*a && *a == *b)
        a++, b++;
    return *a == *b;
}

/* The helper itself, whichever way it reaches the kernel. */
static __attribute__((noreturn)) void run(long argc, char **argv, char **envp) {
    if (argc == 2 && same(argv[1], "--probe"))
        sys_exit(0);
    if (argc < 5) {
        put("opsd-exec: usage: opsd-exec DAEMON_PID TAG PROGRAM ARGV0 [ARGS...]\n");
        sys_exit(127);
    }
    long daemon = 0;
    for (const char *d = argv[1]; *d >= '0' && *d <= '9'; d++)
        daemon = daemon * 10 + (*d - '0');
    const char *tag = argv[2];
    char *program = argv[3];
    long r = sys_pdeathsig_kill();
    if (r < 0)
        fail(tag, "cannot arm the death signal: errno", -r);
    /* The daemon may have died before the signal was armed. */
    if (sys_getppid() != daemon)
        fail(tag, "the daemon exited while starting the program", -1);
    r = sys_execve(program, &argv[4], envp);
    if (r == -ENOEXEC_) {
        /* argv[3] is the program's path, argv[4] its name: sh PATH ARGS... */
        argv[3] = "sh";
        argv[4] = program;
        r = sys_execve("/bin/sh", &argv[3], envp);
    }
    fail(tag, "errno", -r);
}

#ifdef OPSD_EXEC_NOLIBC
__attribute__((noreturn, used)) void start_c(long *sp) {
    long argc = sp[0];
    char **argv = (char **)(sp + 1);
    run(argc, argv, argv + argc + 1);
}
#else
extern char **environ;
int main(int argc, char **argv) { run(argc, argv, environ); }
#endif
