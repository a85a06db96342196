// Command loadtest puts a load on the messaging server and checks the
// result. It creates tenants through the admin API and publishes messages
// over AMQP or HTTP, flat out or at a fixed rate. Then it waits until every
// confirmed message is stored, checks that each is stored exactly once, and
// reports publish rate, stored rate and publish-to-stored latency. With -baseline it
// runs the same load through a bare consumer instead of the server, for
// comparison.
//
// Usage:
//
//	loadtest -jwt-secret "$JWT_SECRET" -tenants 10 -messages 100000 [-via http] [-json]
//
// The exit status is 0 when every confirmed message was stored exactly
// once, 1 when a message is missing or duplicated or the run failed, and 2
// for invalid flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runEnv is the output of a run besides its report.
type runEnv struct {
	stderr io.Writer // warnings and errors
	bars   progressFactory
}

// run is the whole command, with its environment passed in so that tests
// can run it in-process. It returns the exit status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c, err := parseConfig(args, getenv, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		return 2
	}

	if c.CPUProfile != "" {
		stopProfile, err := startCPUProfile(c.CPUProfile)
		if err != nil {
			fmt.Fprintln(stderr, "loadtest:", err)
			return 1
		}
		defer stopProfile()
	}

	env := &runEnv{
		stderr: stderr,
		bars:   progressFactory{w: stderr, enabled: isTerminal(stdout) && isTerminal(stderr)},
	}
	var rep *Report
	if c.Baseline != baselineNone {
		rep, err = runBaseline(ctx, &c, env)
	} else {
		rep, err = runServer(ctx, &c, env)
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadtest:", err)
		if rep == nil {
			return 1
		}
		rep.Error = err.Error()
	}

	if c.JSON {
		err = writeJSON(stdout, rep)
	} else {
		err = writeText(stdout, rep)
	}
	if err != nil {
		fmt.Fprintln(stderr, "loadtest: write report:", err)
		return 1
	}
	if rep.failed() {
		return 1
	}
	return 0
}

// startCPUProfile writes a CPU profile to path until the returned function
// is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("create CPU profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start CPU profile: %w", err)
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}, nil
}
