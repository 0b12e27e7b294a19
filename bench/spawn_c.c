/*
 * Benchmark helper (not a test, not built by CI): starts /bin/true N times,
 * one after the other, from a small C program, with a chosen subset of the
 * kernel work bootplan's spawner asks for. It shows what that kernel work
 * costs without any Rust or runtime around it (docs/benchmarks.md,
 * "Session 16").
 *
 * Build: gcc -O2 -o /tmp/spawn_c bench/spawn_c.c
 * Usage: /tmp/spawn_c N MODE   (prints the mean time per step to stderr)
 * MODE is a sum of:
 *   1  two output pipes (stdout, stderr), read to the end after the exit
 *   2  a pidfd (CLONE_PIDFD), waited on with epoll
 *   4  the child in its own process group (setpgid)
 *   8  clone(CLONE_VM) without CLONE_VFORK: the parent goes on at once
 * MODE 0 is vfork + execve + waitpid, as dash does; MODE 15 is what
 * bootplan's spawner does.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/sched.h>

extern char **environ;
static char *child_argv[] = {"/bin/true", NULL};
static int out_pipe[2], err_pipe[2], mode;
static char stack[64 * 1024];

static int child(void *unused) {
  (void)unused;
  if (mode & 1) {
    dup2(out_pipe[1], 1);
    dup2(err_pipe[1], 2);
  }
  if (mode & 4)
    setpgid(0, 0);
  execve(child_argv[0], child_argv, environ);
  _exit(127);
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s N MODE\n", argv[0]);
    return 2;
  }
  int n = atoi(argv[1]);
  mode = atoi(argv[2]);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  int vfork_flag = (mode & 8) ? 0 : CLONE_VFORK;
  int pidfd_flag = (mode & 2) ? CLONE_PIDFD : 0;
  double start = now();
  for (int i = 0; i < n; i++) {
    if (mode & 1) {
      pipe2(out_pipe, O_CLOEXEC);
      pipe2(err_pipe, O_CLOEXEC);
    }
    int pidfd = -1, status;
    pid_t pid;
    if (mode & (2 | 8))
      pid = clone(child, stack + sizeof stack, CLONE_VM | pidfd_flag | vfork_flag | SIGCHLD,
                  NULL, &pidfd);
    else if ((pid = vfork()) == 0)
      child(NULL);
    if (pid < 0) {
      perror("clone");
      return 1;
    }
    if (mode & 1) {
      close(out_pipe[1]);
      close(err_pipe[1]);
    }
    if (mode & 2) {
      struct epoll_event ev = {.events = EPOLLIN}, ready;
      epoll_ctl(ep, EPOLL_CTL_ADD, pidfd, &ev);
      epoll_wait(ep, &ready, 1, -1);
      waitpid(pid, &status, 0);
      epoll_ctl(ep, EPOLL_CTL_DEL, pidfd, NULL);
      close(pidfd);
    } else {
      waitpid(pid, &status, 0);
    }
    if (mode & 1) {
      char buf[512];
      while (read(out_pipe[0], buf, sizeof buf) > 0) {
      }
      while (read(err_pipe[0], buf, sizeof buf) > 0) {
      }
      close(out_pipe[0]);
      close(err_pipe[0]);
    }
  }
  fprintf(stderr, "mode %d: %.1f us per step\n", mode, (now() - start) / n * 1e6);
  return 0;
}
