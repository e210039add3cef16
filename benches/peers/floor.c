/* The floor of a durable CLI job queue on this machine, for cli.sh: one
 * thread and one epoll loop (as task-spooler's server), every submit,
 * start and end appended to a journal and fdatasync'ed (group commit: one
 * flush per loop round) before the client hears its id or the job starts.
 * No database, no other threads, no output capture, no crash recovery:
 * the least a queue that keeps every acknowledged submit, start and end
 * on disk must do. A measuring stick, not a product (BENCHMARKS.md §23).
 *
 *   gcc -O2 -static floor.c -o floor
 *   floor serve JOURNAL SOCKET PARALLEL &
 *   floor submit SOCKET PROG ARGS...     (prints the job's number)
 *   floor active SOCKET                  (prints how many are queued or running) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
extern char **environ;
#define MAXQ 100000
static char *queue[MAXQ]; static long qh, qt; static long running, next_id;
static char jbuf[1 << 20]; static size_t jlen;
static int replies[1024]; static long reply_ids[1024]; static int nreplies;
static char *starts[1024]; static int nstarts;
static void jappend(const char *s) { size_t n = strlen(s); memcpy(jbuf + jlen, s, n); jlen += n; }
static int sock_at(const char *path, int listen_) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un a = {.sun_family = AF_UNIX}; strncpy(a.sun_path, path, sizeof a.sun_path - 1);
  if (listen_) { unlink(path); if (bind(fd, (void *)&a, sizeof a) || listen(fd, 512)) { perror("bind"); exit(1); } }
  else if (connect(fd, (void *)&a, sizeof a)) { perror("connect"); exit(1); }
  return fd;
}
static void spawn_job(char *cmd) { /* cmd: "prog\0arg\0...\0\0" */
  char *argv[64]; int n = 0; for (char *p = cmd; *p && n < 63; p += strlen(p) + 1) argv[n++] = p; argv[n] = 0;
  posix_spawn_file_actions_t fa; posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  posix_spawnattr_t at; posix_spawnattr_init(&at); sigset_t none; sigemptyset(&none);
  posix_spawnattr_setsigmask(&at, &none); posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETPGROUP);
  pid_t pid; if (posix_spawnp(&pid, argv[0], &fa, &at, argv, environ)) { running--; jappend("end failed-to-start\n"); }
  free(cmd);
}
static int serve(const char *journal, const char *path, long par) {
  int j = open(journal, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  int l = sock_at(path, 1);
  fcntl(l, F_SETFL, O_NONBLOCK); /* accept until EAGAIN */
  sigset_t chld; sigemptyset(&chld); sigaddset(&chld, SIGCHLD); sigprocmask(SIG_BLOCK, &chld, 0);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}; epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
  ev.data.fd = sfd; epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev);
  struct epoll_event evs[256]; char line[4096], rec[4200];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == l) {
        int c; while ((c = accept4(l, 0, 0, SOCK_CLOEXEC)) >= 0) { ev.data.fd = c; epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev); }
      } else if (fd == sfd) {
        struct signalfd_siginfo si; while (read(sfd, &si, sizeof si) > 0) {}
        int st; pid_t p; while ((p = waitpid(-1, &st, WNOHANG)) > 0) { running--; snprintf(rec, sizeof rec, "end %d %d\n", p, st); jappend(rec); }
      } else {
        ssize_t r = read(fd, line, sizeof line - 2);
        epoll_ctl(ep, EPOLL_CTL_DEL, fd, 0);
        if (r <= 0) { close(fd); continue; }
        line[r] = 0; line[r + 1] = 0;
        if (!strcmp(line, "active")) { snprintf(rec, sizeof rec, "%ld\n", running + (qt - qh)); write(fd, rec, strlen(rec)); close(fd); continue; }
        long id = ++next_id;
        int k = snprintf(rec, sizeof rec, "submit %ld", id); /* then the whole argv, space-separated */
        for (char *p = line; *p; p += strlen(p) + 1) k += snprintf(rec + k, sizeof rec - k, " %s", p);
        snprintf(rec + k, sizeof rec - k, "\n"); jappend(rec);
        char *cmd = malloc(r + 2); memcpy(cmd, line, r + 2); queue[qt++ % MAXQ] = cmd;
        replies[nreplies] = fd; reply_ids[nreplies++] = id;
      }
    }
    while (running < par && qh < qt) { running++; starts[nstarts++] = queue[qh++ % MAXQ]; jappend("start\n"); }
    if (jlen) { if (write(j, jbuf, jlen) != (ssize_t)jlen || fdatasync(j)) { perror("journal"); abort(); } jlen = 0; }
    for (int i = 0; i < nreplies; i++) { snprintf(rec, sizeof rec, "%ld\n", reply_ids[i]); write(replies[i], rec, strlen(rec)); close(replies[i]); }
    nreplies = 0;
    for (int i = 0; i < nstarts; i++) spawn_job(starts[i]);
    nstarts = 0;
  }
}
int main(int argc, char **argv) {
  if (argc >= 5 && !strcmp(argv[1], "serve")) return serve(argv[2], argv[3], atol(argv[4]));
  if (argc >= 3 && (!strcmp(argv[1], "submit") || !strcmp(argv[1], "active"))) {
    int fd = sock_at(argv[2], 0); char buf[4096]; size_t len = 0;
    if (!strcmp(argv[1], "active")) { memcpy(buf, "active", 6); len = 6; }
    else for (int i = 3; i < argc; i++) { size_t k = strlen(argv[i]) + 1; memcpy(buf + len, argv[i], k); len += k; }
    if (write(fd, buf, len) != (ssize_t)len) return 1;
    ssize_t r = read(fd, buf, sizeof buf - 1); if (r <= 0) return 1; buf[r] = 0; fputs(buf, stdout); return 0;
  }
  fprintf(stderr, "usage\n"); return 2;
}
