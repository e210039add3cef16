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
 * /bin/sh, as execvp and the shell do.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--probe") == 0)
        return 0;
    if (argc < 5) {
        fputs("opsd-exec: usage: opsd-exec DAEMON_PID TAG PROGRAM ARGV0 [ARGS...]\n", stderr);
        return 127;
    }
    pid_t daemon = (pid_t)strtol(argv[1], NULL, 10);
    const char *tag = argv[2];
    const char *program = argv[3];
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "opsd-exec[%s]: cannot arm the death signal: %s\n", tag, strerror(errno));
        return 127;
    }
    /* The daemon may have died before the signal was armed. */
    if (getppid() != daemon) {
        fprintf(stderr, "opsd-exec[%s]: the daemon exited while starting the program\n", tag);
        return 127;
    }
    execv(program, &argv[4]);
    if (errno == ENOEXEC) {
        /* argv[3] is the program's path, argv[4] its name: sh PATH ARGS... */
        argv[3] = "sh";
        argv[4] = (char *)program;
        execv("/bin/sh", &argv[3]);
    }
    fprintf(stderr, "opsd-exec[%s]: %s\n", tag, strerror(errno));
    return 127;
}
