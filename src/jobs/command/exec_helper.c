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
 * usage: opsd-exec DAEMON_PID PROGRAM ARGV0 [ARGS...]
 *        opsd-exec --probe        (exits 0: the daemon checks it can run us)
 *
 * A failure is one line on stderr starting with "opsd-exec: " and exit
 * status 127; the daemon turns that into the operation's error.
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
    if (argc < 4) {
        fputs("opsd-exec: usage: opsd-exec DAEMON_PID PROGRAM ARGV0 [ARGS...]\n", stderr);
        return 127;
    }
    pid_t daemon = (pid_t)strtol(argv[1], NULL, 10);
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        fprintf(stderr, "opsd-exec: cannot arm the death signal: %s\n", strerror(errno));
        return 127;
    }
    /* The daemon may have died before the signal was armed. */
    if (getppid() != daemon) {
        fputs("opsd-exec: the daemon exited while starting the program\n", stderr);
        return 127;
    }
    execv(argv[2], &argv[3]);
    fprintf(stderr, "opsd-exec: %s\n", strerror(errno));
    return 127;
}
