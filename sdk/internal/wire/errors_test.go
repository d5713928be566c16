package wire

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/flotilla-ci/flotilla/sdk/provider"
)

func TestSentinelsSurviveTheWire(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		code     codes.Code
		sentinel []error
	}{
		{"not found", fmt.Errorf("instance i-1: %w", provider.ErrNotFound), codes.NotFound, []error{provider.ErrNotFound}},
		{"capacity", fmt.Errorf("zone full: %w", provider.ErrCapacity), codes.ResourceExhausted, []error{provider.ErrCapacity}},
		{"unhealthy", fmt.Errorf("disk full: %w", provider.ErrInstanceUnhealthy), codes.FailedPrecondition, []error{provider.ErrInstanceUnhealthy}},
		{"suspend unsupported", provider.ErrSuspendResumeNotSupported, codes.Unimplemented, []error{provider.ErrNotSupported}},
		{"joined config problems", errors.Join(
			fmt.Errorf("plugin_config.a: required: %w", provider.ErrInvalidConfig),
			fmt.Errorf("plugin_config.b: bad: %w", provider.ErrInvalidConfig)), codes.InvalidArgument, []error{provider.ErrInvalidConfig}},
		{"mixed kinds keep each", errors.Join(
			fmt.Errorf("i-1: %w", provider.ErrNotFound),
			fmt.Errorf("quota: %w", provider.ErrCapacity)), codes.NotFound, []error{provider.ErrNotFound, provider.ErrCapacity}},
		{"plain error", errors.New("api down"), codes.Unknown, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := ToStatus(tt.err)
			if got := status.Code(st); got != tt.code {
				t.Fatalf("code = %v, want %v", got, tt.code)
			}
			back := FromStatus(context.Background(), "call", st)
			for _, s := range tt.sentinel {
				if !errors.Is(back, s) {
					t.Errorf("errors.Is(%v, %v) = false after the round trip", back, s)
				}
			}
			for _, leaf := range leaves(tt.err) {
				if !strings.Contains(back.Error(), leaf.Error()) {
					t.Errorf("message %q lost %q", back, leaf)
				}
			}
			if tt.sentinel == nil && errors.Is(back, provider.ErrNotFound) {
				t.Errorf("plain error gained a kind: %v", back)
			}
		})
	}
}

func TestUnimplementedIsNotSupported(t *testing.T) {
	err := FromStatus(context.Background(), "heartbeat", status.Error(codes.Unimplemented, "unknown method Heartbeat"))
	if !errors.Is(err, provider.ErrNotSupported) {
		t.Fatalf("%v does not wrap ErrNotSupported", err)
	}
}

func TestCancelledCallReturnsContextCause(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cause := errors.New("host shutting down")
	cancel(cause)
	err := FromStatus(ctx, "update", status.Error(codes.Canceled, "context canceled"))
	if !errors.Is(err, cause) {
		t.Fatalf("%v does not carry the cancellation cause", err)
	}
}

func TestStatesRoundTrip(t *testing.T) {
	for _, s := range provider.States {
		p, ok := StateToPB(s)
		if !ok {
			t.Fatalf("%s has no wire value", s)
		}
		back, ok := StateFromPB(p)
		if !ok || back != s {
			t.Fatalf("%s -> %v -> %s", s, p, back)
		}
	}
	if _, ok := StateToPB("booting"); ok {
		t.Fatal("an invalid state was accepted")
	}
}
