package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/host/taskscaler"
	"github.com/flotilla-ci/flotilla/host/taskscaler/clock"
	"github.com/flotilla-ci/flotilla/sdk/fake"
)

func TestRunStatus(t *testing.T) {
	g := fake.New(fake.Options{})
	s, err := taskscaler.New(context.Background(), g, taskscaler.Options{Manual: true, Owner: "https://gitlab.example|7",
		Clock: clock.NewFake(time.Date(2026, 4, 1, 8, 0, 0, 0, time.UTC)), Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		CapacityPerInstance: 2, MaxInstances: 1, Policies: []taskscaler.Policy{{IdleCount: 4, IdleTime: time.Minute}}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown(context.Background())
	for range 2 {
		if err := s.Reconcile(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(taskscaler.StatusHandler(func() []taskscaler.StatusSource { return []taskscaler.StatusSource{s} }))
	defer srv.Close()

	cases := []struct {
		name     string
		instance string
		json     bool
		want     []string
		wantCode int
	}{
		{"summary", "", false, []string{"scaler https://gitlab.example|7", "capacity: 2 jobs per instance, max 2 jobs",
			"idle_count 4 jobs (= 2 instances)", "max_instances 1 reached", "fake-0001"}, 0},
		{"explain", "fake-0001", false, []string{"instance fake-0001: ready", "cause created", "created", "ready"}, 0},
		{"json", "", true, []string{`"scalers"`, `"owner": "https://gitlab.example|7"`}, 0},
		{"unknown instance", "nope", false, []string{"not known"}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var out bytes.Buffer
			err := runStatus(context.Background(), &out, srv.URL+"/status", c.instance, c.json)
			var ee exitError
			switch {
			case c.wantCode != 0 && (!errors.As(err, &ee) || ee.code != c.wantCode):
				t.Fatalf("err %v, want exit %d", err, c.wantCode)
			case c.wantCode == 0 && err != nil:
				t.Fatal(err)
			}
			for _, w := range c.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
	if err := runStatus(context.Background(), io.Discard, "not a url", "", false); err == nil || !strings.Contains(err.Error(), "--url") {
		t.Fatalf("bad url: %v", err)
	}
}
