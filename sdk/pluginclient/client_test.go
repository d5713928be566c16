package pluginclient_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/flotilla-ci/flotilla/sdk/fake"
	"github.com/flotilla-ci/flotilla/sdk/plugin"
	"github.com/flotilla-ci/flotilla/sdk/pluginclient"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// configured is a fake group with a configuration, to exercise config decoding.
type configured struct {
	*fake.Group
	Name  string `json:"name"`
	Count int    `json:"count"`
}

func (c *configured) Validate() error {
	if c.Count < 0 {
		return errors.New("plugin_config.count: must not be negative")
	}
	return nil
}

func attach(t *testing.T, impl provider.InstanceGroup, config string) *pluginclient.Plugin {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	rc, _, err := plugin.ServeInProcess(ctx, impl, plugin.VersionInfo{Name: "test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pluginclient.Attach(ctx, rc, []byte(config), pluginclient.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Kill)
	return p
}

func TestRoundTripOverGRPC(t *testing.T) {
	ctx := context.Background()
	g := fake.New(fake.Options{MaxSize: 3})
	impl := &configured{Group: g}
	p := attach(t, impl, `{"name":"pool","count":2}`)

	info, err := p.Init(ctx, nil, provider.Settings{ConnectorConfig: provider.ConnectorConfig{Username: "ci", Timeout: time.Minute}})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	if info.ID != "fake/local/group" || info.MaxSize != 3 {
		t.Fatalf("info = %+v", info)
	}
	if impl.Name != "pool" || impl.Count != 2 {
		t.Fatalf("config not decoded into the plugin: %+v", impl)
	}
	n, err := p.Increase(ctx, 5)
	if n != 3 || !errors.Is(err, provider.ErrCapacity) {
		t.Fatalf("Increase(5) = %d, %v; want 3 and ErrCapacity across the wire", n, err)
	}
	var ids []string
	if err := p.Update(ctx, func(id string, s provider.State) {
		if s != provider.StateRunning {
			t.Errorf("%s is %s", id, s)
		}
		ids = append(ids, id)
	}); err != nil || len(ids) != 3 {
		t.Fatalf("Update: %v, ids %v", err, ids)
	}
	done, err := p.Decrease(ctx, []string{ids[0], "missing"})
	if len(done) != 1 || done[0] != ids[0] || !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("Decrease = %v, %v", done, err)
	}
	if _, err := p.ConnectInfo(ctx, "missing"); !errors.Is(err, provider.ErrNotFound) {
		t.Fatalf("ConnectInfo(missing) = %v, want ErrNotFound", err)
	}
	if _, err := p.Suspend(ctx, ids[1:2]); !errors.Is(err, provider.ErrNotSupported) {
		t.Fatalf("Suspend = %v, want ErrNotSupported", err)
	}
	g.SetUnhealthy(ids[1], true)
	if err := p.Heartbeat(ctx, ids[1]); !errors.Is(err, provider.ErrInstanceUnhealthy) {
		t.Fatalf("Heartbeat = %v, want ErrInstanceUnhealthy", err)
	}
}

func TestConfigProblemsAllReported(t *testing.T) {
	p := attach(t, &configured{Group: fake.New(fake.Options{})}, `{"nmae":"x","count":"two","extra":1}`)
	_, err := p.Init(context.Background(), nil, provider.Settings{})
	if !errors.Is(err, provider.ErrInvalidConfig) {
		t.Fatalf("Init err = %v, want ErrInvalidConfig", err)
	}
	for _, want := range []string{`plugin_config.nmae: unknown key (did you mean "name"?)`, "plugin_config.count: expected int", "plugin_config.extra: unknown key"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func TestValidateCalled(t *testing.T) {
	p := attach(t, &configured{Group: fake.New(fake.Options{})}, `{"count":-1}`)
	_, err := p.Init(context.Background(), nil, provider.Settings{})
	if !errors.Is(err, provider.ErrInvalidConfig) || !strings.Contains(err.Error(), "must not be negative") {
		t.Fatalf("Init err = %v", err)
	}
}

func TestCallsBeforeInitRefused(t *testing.T) {
	p := attach(t, fake.New(fake.Options{}), `{}`)
	if _, err := p.Increase(context.Background(), 1); err == nil || !strings.Contains(err.Error(), "Init must be called first") {
		t.Fatalf("Increase before Init = %v", err)
	}
}
