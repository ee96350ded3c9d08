package bench

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a redis-server the bench starts for the durable Redis
// peer (EngineRedisDurable): on a private port on 127.0.0.1, with an
// append-only file fsynced before every reply (appendonly yes, appendfsync
// always) in a temporary directory, and no RDB snapshots. A write it
// acknowledges is then on disk, as a PostgreSQL commit is.
type redisServer struct {
	cmd  *exec.Cmd
	dir  string
	addr string
	out  bytes.Buffer
	done chan struct{}
}

// startRedisServer starts redis-server (path: an executable name or
// path) and waits until it answers; it returns nil and the reason when it
// cannot.
func startRedisServer(ctx context.Context, path string) (*redisServer, string) {
	bin, err := lookPath(path)
	if err != nil {
		return nil, fmt.Sprintf("%s not found on PATH (it ships with Redis, e.g. apt-get install redis-server)", path)
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Sprintf("no free port for redis-server: %v", err)
	}
	dir, err := os.MkdirTemp("", "agentsessions-redis-")
	if err != nil {
		return nil, err.Error()
	}
	s := &redisServer{dir: dir, addr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan struct{})}
	// Not CommandContext: the server must outlive a canceled run long
	// enough for the peer to delete its keys; stop ends it.
	s.cmd = exec.Command(bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--dir", dir,
		"--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", "")
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	if err := s.cmd.Start(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Sprintf("start %s: %v", bin, err)
	}
	go func() { _ = s.cmd.Wait(); close(s.done) }()
	c := redis.NewClient(&redis.Options{Addr: s.addr, DialTimeout: 200 * time.Millisecond, MaxRetries: -1, PoolSize: 1})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		err := c.Ping(pctx).Err()
		cancel()
		if err == nil {
			return s, ""
		}
		select {
		case <-s.done:
			_ = os.RemoveAll(dir)
			return nil, fmt.Sprintf("%s exited at start: %s", bin, lastLines(s.out.String(), 5))
		case <-time.After(50 * time.Millisecond):
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			s.stop()
			return nil, fmt.Sprintf("%s did not answer on %s: %v", bin, s.addr, err)
		}
	}
}

// url is the server's address as a --redis-url.
func (s *redisServer) url() string { return "redis://" + s.addr + "/0" }

// stop ends the server (SIGTERM, then SIGKILL after 10s) and deletes its
// directory.
func (s *redisServer) stop() {
	_ = s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
	_ = os.RemoveAll(s.dir)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
