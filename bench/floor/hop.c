/*
 * The floor of a round-robin hand-off, for bench/http.py: the cheapest primary that
 * still hands every connection to a worker process.
 *
 *   hop PORT WORKERS rr|none PYTHON WORKER_SCRIPT
 *
 * It listens on 127.0.0.1:PORT and starts WORKERS copies of `PYTHON WORKER_SCRIPT FD
 * POLICY`. Under rr it accepts each connection, passes its descriptor to the next
 * worker in turn in one sendmsg (a one-byte message, as pycluster's) and closes its own
 * copy at once; under none it only waits, and the workers accept on the listening
 * socket itself (FD is then that socket).
 *
 * Everything pycluster's primary does beyond that is left out on purpose: no Python,
 * no acknowledgements and no window (a worker that dies loses what was sent to it), no
 * busy or lagging workers passed over, no hold for the worker whose turn it is. What
 * is left is the hop itself (an extra process woken per batch of connections, a
 * descriptor passed between processes), so the ratio of its rr to its none says what a
 * hand-off costs on the machine, whatever the primary is written in. Like pycluster's
 * primary it runs under SCHED_BATCH, so that its wake-ups do not preempt a worker.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_WORKERS 64

static pid_t workers[MAX_WORKERS];
static int nworkers;

static void stop(int sig) {
    /* The benchmark signals every process itself; this covers a signal to us alone. */
    for (int i = 0; i < nworkers; i++)
        kill(workers[i], SIGTERM);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int handoff(int to, int fd) {
    char byte = 'C';
    struct iovec iov = {&byte, 1};
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cm), &fd, sizeof(int));
    return (int)sendmsg(to, &msg, MSG_NOSIGNAL);
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s PORT WORKERS rr|none PYTHON WORKER_SCRIPT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    nworkers = atoi(argv[2]);
    int shared = strcmp(argv[3], "none") == 0;
    if (nworkers < 1 || nworkers > MAX_WORKERS || (!shared && strcmp(argv[3], "rr") != 0)) {
        fprintf(stderr, "hop: bad arguments\n");
        return 2;
    }
    int lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&addr, sizeof addr) || listen(lsock, 511)) {
        perror("hop: listen");
        return 1;
    }
    signal(SIGTERM, stop);
    signal(SIGINT, stop);
    int ends[MAX_WORKERS];
    for (int i = 0; i < nworkers; i++) {
        int pair[2] = {-1, -1};
        if (!shared && socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair)) {
            perror("hop: socketpair");
            return 1;
        }
        pid_t pid = fork();
        if (pid < 0) {
            perror("hop: fork");
            return 1;
        }
        if (pid == 0) {
            /* A duplicate has no close-on-exec flag: the worker's socket survives exec,
               every other descriptor of ours does not. */
            int give = dup(shared ? lsock : pair[1]);
            char fdarg[16];
            snprintf(fdarg, sizeof fdarg, "%d", give);
            execl(argv[4], argv[4], argv[5], fdarg, argv[3], (char *)NULL);
            perror("hop: exec");
            _exit(127);
        }
        workers[i] = pid;
        if (!shared) {
            close(pair[1]);
            ends[i] = pair[0];
        }
    }
    if (shared) {
        for (;;) {
            if (wait(NULL) < 0 && errno == ECHILD)
                return 0;
        }
    }
    struct sched_param param = {0};
    sched_setscheduler(0, SCHED_BATCH, &param);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lsock};
    epoll_ctl(ep, EPOLL_CTL_ADD, lsock, &ev);
    unsigned next = 0;
    for (;;) {
        struct epoll_event out[1];
        if (epoll_wait(ep, out, 1, -1) < 0)
            continue;
        for (;;) {
            int conn = accept4(lsock, NULL, NULL, SOCK_CLOEXEC);
            if (conn < 0)
                break;
            handoff(ends[next++ % (unsigned)nworkers], conn);
            close(conn);
        }
    }
}
