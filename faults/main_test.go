//go:build faults

// Package faults injects faults into a running server process, the
// RabbitMQ broker and the PostgreSQL server of this machine, and checks
// that nothing the broker confirmed is lost and nothing is stored twice.
//
// The tests build cmd/server, start it as a child process and break its
// surroundings with rabbitmqctl, psql, pg_terminate_backend, SIGKILL and
// SIGTERM. Tests that break a service other tests share (a broker
// connection reset or restart, a PostgreSQL restart) do not call
// t.Parallel, so Go runs them before, and never beside, the parallel ones.
//
// Run with: go test -tags faults -count=1 -timeout 15m ./faults/
package faults

import (
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/go-messaging-system/messaging/internal/testenv"
)

// serverBinary is the server built once by TestMain.
var serverBinary string

// httpClient sends every request of the tests. TestMain closes its idle
// connections before the goroutine leak check.
var httpClient = &http.Client{Timeout: requestTimeout}

func TestMain(m *testing.M) {
	// The faultinject tag adds the hook that crashes a worker on a marked
	// message (actors/faultinject.go); release builds do not have it.
	binary, remove, err := testenv.BuildServer("faultinject")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	serverBinary = binary

	code := m.Run()
	httpClient.CloseIdleConnections()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	remove()
	os.Exit(code)
}
