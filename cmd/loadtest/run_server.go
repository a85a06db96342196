package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/go-messaging-system/messaging/api"
)

// tokenTTL is the lifetime of the tokens the harness signs.
const tokenTTL = 24 * time.Hour

// cleanupTimeout bounds the deletion of the run's tenants, which also runs
// after an interrupt.
const cleanupTimeout = time.Minute

// readyTimeout bounds the wait for new tenants' workers to run.
const readyTimeout = 2 * time.Minute

// runServer runs the load against the server: the phases of c.Phase.
func runServer(ctx context.Context, c *Config, env *runEnv) (*Report, error) {
	admin, err := adminToken(c)
	if err != nil {
		return nil, err
	}
	a := newAPIClient(c.Server, admin, c.Publishers+4)
	defer a.close()

	ids := c.tenantIDs()
	rep := &Report{Mode: "server", Via: c.Via, Phase: c.Phase, PayloadBytes: c.PayloadBytes, Rate: c.Rate, Workers: c.Workers}
	if c.Phase == phaseAll || c.Phase == phaseSetup {
		started := time.Now()
		err := setupTenants(ctx, a, ids, c.Workers)
		if c.Phase == phaseAll && !c.Keep {
			defer deleteTenants(a, ids, env)
		}
		if err != nil {
			return nil, err
		}
		rep.SetupSeconds = time.Since(started).Seconds()
	}
	if c.Phase == phaseVerify && !c.Keep {
		defer deleteTenants(a, ids, env)
	}

	switch c.Phase {
	case phaseSetup:
		buildReport(rep, ids, make([]tally, len(ids)), window{})
		return rep, nil
	case phaseVerify:
		return rep, verifyServer(ctx, c, a, rep, plannedLedger(c), window{}, env)
	}

	led := newLedger(c.Tenants)
	w, err := publishServer(ctx, c, a, ids, led, env)
	if c.Phase == phasePublish {
		buildReport(rep, ids, publishedTallies(led), w)
		return rep, err
	}
	if verr := verifyServer(ctx, c, a, rep, led, w, env); verr != nil {
		return rep, errors.Join(err, verr)
	}
	return rep, err
}

// adminToken returns -admin-token, or else an admin token signed with
// -jwt-secret.
func adminToken(c *Config) (string, error) {
	if c.AdminToken != "" || c.JWTSecret == "" {
		return c.AdminToken, nil
	}
	return api.SignToken([]byte(c.JWTSecret), api.Claims{Role: api.RoleAdmin}, tokenTTL)
}

// setupConcurrency is the number of tenants created at the same time.
const setupConcurrency = 8

// setupTenants creates (or reuses) the tenants and waits until each runs
// all its workers.
func setupTenants(ctx context.Context, a *apiClient, ids []string, workers int) error {
	sem := make(chan struct{}, setupConcurrency)
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := a.createTenant(ctx, id, workers); err != nil {
				errs[i] = fmt.Errorf("create tenant %s: %w", id, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return waitReady(ctx, a, ids)
}

// waitReady polls the tenant list until every tenant of ids runs as many
// workers as its worker_count requests.
func waitReady(ctx context.Context, a *apiClient, ids []string) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	for {
		var list struct {
			Tenants []tenantView `json:"tenants"`
		}
		err := a.do(ctx, http.MethodGet, "/api/v1/tenants", a.admin, nil, http.StatusOK, &list)
		if err == nil {
			ready := 0
			for _, t := range list.Tenants {
				if want[t.ID] && t.WorkersRunning >= t.WorkerCount {
					ready++
				}
			}
			if ready == len(ids) {
				return nil
			}
		}
		if !sleepUntil(ctx, time.Now().Add(pollInterval)) {
			return fmt.Errorf("tenants not ready within %s (last error: %v)", readyTimeout, err)
		}
	}
}

// deleteAttempts bounds the tries to delete one tenant. The server returns
// 503 while its broker connection is down, which a later try may outlast.
const deleteAttempts = 5

// deleteTenants deletes the tenants, reporting failures on the way.
func deleteTenants(a *apiClient, ids []string, env *runEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	sem := make(chan struct{}, setupConcurrency)
	var wg sync.WaitGroup
	for _, id := range ids {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			var err error
			for attempt := 1; attempt <= deleteAttempts; attempt++ {
				err = a.deleteTenant(ctx, id)
				var se *statusError
				if err == nil || (errors.As(err, &se) && se.status < 500) {
					break
				}
				if !sleepUntil(ctx, time.Now().Add(time.Second)) {
					break
				}
			}
			if err != nil {
				fmt.Fprintf(env.stderr, "loadtest: delete tenant %s: %v\n", id, err)
			}
		})
	}
	wg.Wait()
}

// publishServer publishes the load over c.Via and returns the publishing
// window.
func publishServer(ctx context.Context, c *Config, a *apiClient, ids []string, led *ledger, env *runEnv) (window, error) {
	pubs, closePubs, err := newPublishers(c, a, ids)
	if err != nil {
		return window{}, err
	}
	defer closePubs()

	prog := env.bars.newProgress("publishing", plannedTotal(c))
	res := publishAll(ctx, c, pubs, led, prog)
	prog.finish()
	w := window{publishStart: res.started, publishEnd: res.finished, storeStart: res.started}
	return w, res.err
}

// newPublishers returns c.Publishers publishers over c.Via and a function
// that closes them.
func newPublishers(c *Config, a *apiClient, ids []string) ([]publisher, func(), error) {
	if c.Via == viaHTTP {
		tokens, err := tenantTokens(c.JWTSecret, ids, tokenTTL)
		if err != nil {
			return nil, nil, err
		}
		pubs := make([]publisher, c.Publishers)
		for i := range pubs {
			pubs[i] = &httpPublisher{api: a, tenants: ids, tokens: tokens, size: c.PayloadBytes}
		}
		return pubs, func() {}, nil
	}
	return newAMQPPublishers(c, ids)
}

// newAMQPPublishers opens one connection with a channel per publisher.
func newAMQPPublishers(c *Config, ids []string) ([]publisher, func(), error) {
	conn, err := dialAMQP(c.RabbitMQ)
	if err != nil {
		return nil, nil, err
	}
	pubs := make([]publisher, 0, c.Publishers)
	closeAll := func() {
		for _, p := range pubs {
			_ = p.close()
		}
		_ = conn.Close()
	}
	for range c.Publishers {
		p, err := newAMQPPublisher(conn, ids, c.PayloadBytes, c.Batch)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		pubs = append(pubs, p)
	}
	return pubs, closeAll, nil
}

// verifyServer waits for the stored rows and fills rep from them, reading
// from the database when c.DatabaseURL is set and else from the list API.
func verifyServer(ctx context.Context, c *Config, a *apiClient, rep *Report, led *ledger, w window, env *runEnv) error {
	var src rowSource = newAPISource(a, c.tenantIDs())
	if c.DatabaseURL != "" {
		pool, err := pgxpool.New(ctx, c.DatabaseURL)
		if err != nil {
			return fmt.Errorf("connect to the database: %w", err)
		}
		defer pool.Close()
		src = &dbSource{pool: pool, tenants: c.tenantIDs()}
	}
	return waitAndVerify(ctx, c, src, led, rep, w, env, nil)
}

// waitAndVerify waits until the rows are stored, verifies them and fills
// rep. An error from abort (nil for none) ends the wait early.
func waitAndVerify(ctx context.Context, c *Config, src rowSource, led *ledger, rep *Report, w window, env *runEnv,
	abort <-chan error) error {
	total := 0
	for i := range c.Tenants {
		total += led.confirmed(i)
	}
	prog := env.bars.newProgress("stored", int64(total))
	waitErr := waitStored(ctx, src, led, c.Timeout, prog, abort)
	prog.finish()

	tallies, err := verifyAll(ctx, src, led)
	if err != nil {
		return errors.Join(waitErr, err)
	}
	buildReport(rep, c.tenantIDs(), tallies, w)
	return waitErr
}

// publishedTallies returns tallies with only the publish counts, for a
// publish phase that does not wait for the server.
func publishedTallies(led *ledger) []tally {
	out := make([]tally, len(led.states))
	for i := range out {
		for _, s := range led.tenant(i) {
			switch s {
			case stateConfirmed:
				out[i].published++
			case stateFailed:
				out[i].failed++
			}
		}
	}
	return out
}
