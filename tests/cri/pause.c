/* sluice-pause: the pod sandbox's only process, as Kubernetes' pause image runs.
 * Holds the sandbox's namespaces open; reaps orphans (it is PID 1 of the pod);
 * exits 0 on SIGINT or SIGTERM (StopPodSandbox). Linked statically: the sandbox
 * image (tests/cri/build-pause-image.sh) holds nothing else. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction sa = {0};
  sa.sa_handler = stop;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  sa.sa_handler = reap;
  sa.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &sa, NULL);
  for (;;) pause();
  return 0;
}
