package cloudsim

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func states(t *testing.T, c *Cloud, group string) map[State]int {
	t.Helper()
	vms, err := c.VMs(group)
	if err != nil {
		t.Fatal(err)
	}
	out := map[State]int{}
	for _, v := range vms {
		out[v.State]++
	}
	return out
}

func TestLifecycleOnVirtualTime(t *testing.T) {
	clock := NewVirtualClock(t0)
	c := New(Options{Clock: clock, BootDelay: Fixed(30 * time.Second), StopDelay: Fixed(10 * time.Second)})
	if err := c.CreateGroup(Group{Name: "g", Max: 5}); err != nil {
		t.Fatal(err)
	}
	if err := c.SetDesired("g", 3); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		advance time.Duration
		do      func()
		want    map[State]int
	}{
		{0, nil, map[State]int{Pending: 3}},
		{29 * time.Second, nil, map[State]int{Pending: 3}},
		{time.Second, nil, map[State]int{Running: 3}},
		{0, func() {
			vms, _ := c.VMs("g")
			if _, err := c.Terminate("g", []string{vms[0].ID}, true, "test"); err != nil {
				t.Fatal(err)
			}
		}, map[State]int{Running: 2, Terminating: 1}},
		{10 * time.Second, nil, map[State]int{Running: 2}},
		{0, func() {
			vms, _ := c.VMs("g")
			if _, err := c.Terminate("g", []string{vms[0].ID}, false, "test"); err != nil { // replaced
				t.Fatal(err)
			}
		}, map[State]int{Running: 1, Terminating: 1, Pending: 1}},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		if s.do != nil {
			s.do()
		}
		if got := states(t, c, "g"); !equalCounts(got, s.want) {
			t.Errorf("step %d: states %v, want %v", i, got, s.want)
		}
	}
	if err := c.Check(); err != nil {
		t.Error(err)
	}
}

func equalCounts(a, b map[State]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestBoundsAndNotFound(t *testing.T) {
	c := New(Options{})
	if err := c.CreateGroup(Group{Name: "g", Min: 1, Desired: 1, Max: 2}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		err  error
		want Kind
	}{
		{"above max", c.SetDesired("g", 3), KindInvalid},
		{"below min", c.SetDesired("g", 0), KindInvalid},
		{"unknown group", c.SetDesired("nope", 1), KindNotFound},
		{"bad group", c.CreateGroup(Group{Name: "bad", Min: 2, Max: 1}), KindInvalid},
		{"terminate unknown", func() error { _, err := c.Terminate("g", []string{"vm-999"}, true, "t"); return err }(), KindNotFound},
		{"terminate below min", func() error {
			vms, _ := c.VMs("g")
			_, err := c.Terminate("g", []string{vms[0].ID}, true, "t")
			return err
		}(), KindInvalid},
	}
	for _, tc := range cases {
		if got := KindOf(tc.err); tc.err == nil || got != tc.want {
			t.Errorf("%s: %v (kind %s), want kind %s", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestCapacity(t *testing.T) {
	clock := NewVirtualClock(t0)
	c := New(Options{Clock: clock, Capacity: 5})
	_ = c.CreateGroup(Group{Name: "a", Max: 10, Capacity: 3})
	_ = c.CreateGroup(Group{Name: "b", Max: 10})
	if err := c.SetDesired("a", 4); err != nil {
		t.Fatal(err)
	}
	g, _ := c.GetGroup("a")
	if n := len(mustVMs(t, c, "a")); n != 3 || !strings.Contains(g.LastError, "insufficient capacity") {
		t.Errorf("group a: %d VMs, last error %q; want 3 and a capacity error", n, g.LastError)
	}
	_ = c.SetDesired("b", 4)
	if n := len(mustVMs(t, c, "b")); n != 2 {
		t.Errorf("group b: %d VMs, want 2 (cloud capacity 5)", n)
	}
	// Freeing capacity lets the missing launches happen at the next call.
	if err := c.SetDesired("a", 2); err != nil {
		t.Fatal(err)
	}
	if n := len(mustVMs(t, c, "b")); n != 3 {
		t.Errorf("group b after group a shrank: %d VMs, want 3", n)
	}
	if err := c.Check(); err != nil {
		t.Error(err)
	}
}

func mustVMs(t *testing.T, c *Cloud, g string) []VM {
	t.Helper()
	var out []VM
	vms, err := c.VMs(g)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.State != Terminating {
			out = append(out, v)
		}
	}
	return out
}

func TestScaleInSparesProtected(t *testing.T) {
	cases := []struct {
		protected bool
		wantLive  int
	}{{true, 4}, {false, 1}}
	for _, tc := range cases {
		c := New(Options{})
		_ = c.CreateGroup(Group{Name: "g", Max: 4, Desired: 4, Settings: Settings{ScaleInProtection: tc.protected}})
		_ = c.SetDesired("g", 1)
		if n := len(mustVMs(t, c, "g")); n != tc.wantLive {
			t.Errorf("protected=%v: %d active VMs after scale-in to 1, want %d", tc.protected, n, tc.wantLive)
		}
		if r := c.Reasons()["scale-in"]; r != 4-tc.wantLive {
			t.Errorf("protected=%v: %d scale-in terminations", tc.protected, r)
		}
	}
}

func TestOverprovision(t *testing.T) {
	clock := NewVirtualClock(t0)
	c := New(Options{Clock: clock, BootDelay: Fixed(10 * time.Second)})
	_ = c.CreateGroup(Group{Name: "g", Max: 10, Settings: Settings{Overprovision: true}})
	if err := c.SetDesired("g", 5); err != nil {
		t.Fatal(err)
	}
	vms := mustVMs(t, c, "g")
	extras := 0
	for _, v := range vms {
		if v.Overprovisioned {
			extras++
		}
	}
	if len(vms) != 6 || extras != 1 {
		t.Fatalf("after asking for 5: %d VMs, %d extra; want 6 and 1", len(vms), extras)
	}
	clock.Advance(10 * time.Second)
	if got := states(t, c, "g"); !equalCounts(got, map[State]int{Running: 5}) {
		t.Errorf("after boot: %v, want 5 running", got)
	}
	if n := c.Reasons()["overprovision"]; n != 1 {
		t.Errorf("%d VMs deleted as overprovisioned, want 1", n)
	}
	if err := c.Check(); err != nil {
		t.Error(err)
	}
}

func TestThrottleAndFaults(t *testing.T) {
	clock := NewVirtualClock(t0)
	c := New(Options{Clock: clock, Families: map[string]string{"List": "read", "Get": "read"}})
	c.Throttle("read", 2, 3) // 2/s, burst 3
	var got []bool
	for range 5 {
		got = append(got, c.Call("List") == nil)
	}
	if !slices.Equal(got, []bool{true, true, true, false, false}) {
		t.Errorf("burst: %v", got)
	}
	if err := c.Call("Get"); KindOf(err) != KindThrottled {
		t.Errorf("same family: %v, want throttled", err)
	}
	if err := c.Call("Other"); err != nil {
		t.Errorf("other family: %v", err)
	}
	clock.Advance(time.Second) // refills 2 tokens
	if c.Call("List") != nil || c.Call("List") != nil || c.Call("List") == nil {
		t.Error("refill did not give exactly 2 tokens")
	}
	boom := errors.New("boom")
	c.Inject("Other", 2, boom)
	c.Inject("Other", 1, &Error{Kind: KindInternal, Message: "second"})
	var errs []string
	for range 4 {
		if err := c.Call("Other"); err != nil {
			errs = append(errs, err.Error())
		} else {
			errs = append(errs, "ok")
		}
	}
	if !slices.Equal(errs, []string{"boom", "boom", "internal: second", "ok"}) {
		t.Errorf("faults: %v", errs)
	}
	calls := c.Calls()
	if calls["List"] != 8 || calls["Get"] != 1 || calls["Other"] != 5 || c.ThrottledCalls()["List"] != 3 || c.TotalCalls("") != 14 {
		t.Errorf("calls %v, throttled %v", calls, c.ThrottledCalls())
	}
	c.ResetCalls()
	if c.TotalCalls("") != 0 {
		t.Error("ResetCalls left calls")
	}
}

func TestCheckFindsViolations(t *testing.T) {
	cases := []struct {
		name    string
		corrupt func(c *Cloud)
		want    string
	}{
		{"terminated without reason", func(c *Cloud) { c.vms[c.order[0]].State, c.vms[c.order[0]].TermReason = Terminated, "" }, "no request or event"},
		{"lost VM", func(c *Cloud) { delete(c.vms, c.order[0]); c.order = c.order[1:] }, "3 VMs created but 2 recorded"},
		{"duplicated", func(c *Cloud) { c.order = append(c.order, c.order[0]); c.created++ }, "created twice"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := New(Options{})
			_ = c.CreateGroup(Group{Name: "g", Max: 3, Desired: 2})
			if err := c.Check(); err != nil {
				t.Fatalf("healthy cloud: %v", err)
			}
			c.mu.Lock()
			tc.corrupt(c)
			c.mu.Unlock()
			if err := c.Check(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestLogNormal(t *testing.T) {
	d := LogNormal{Median: 40 * time.Second, P99: 120 * time.Second}
	r := rand.New(rand.NewPCG(1, 2))
	var s []time.Duration
	for range 5000 {
		s = append(s, d.Sample(r))
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	med, p99 := s[len(s)/2], s[len(s)*99/100]
	if med < 36*time.Second || med > 44*time.Second || p99 < 100*time.Second || p99 > 140*time.Second {
		t.Errorf("median %v, p99 %v; want about 40s and 120s", med, p99)
	}
}

// TestSSHBackend: a running VM is a real SSH server that accepts static and pushed keys
// (the latter for 60 s of cloud time), runs commands, and goes away on termination.
func TestSSHBackend(t *testing.T) {
	clock := NewVirtualClock(t0)
	staticPub, staticPEM, err := NewClientKey()
	if err != nil {
		t.Fatal(err)
	}
	c := New(Options{Clock: clock, Backend: &SSHBackend{Dir: t.TempDir(), User: "ec2-user", AuthorizedKeys: []ssh.PublicKey{staticPub}}})
	defer c.Close()
	_ = c.CreateGroup(Group{Name: "g", Max: 1, Desired: 1})
	vm := mustVMs(t, c, "g")[0]
	if vm.State != Running || vm.Endpoint.Port == 0 || !strings.HasPrefix(vm.Endpoint.HostKey, "ssh-ed25519 ") {
		t.Fatalf("VM %+v: want running with an endpoint", vm)
	}
	pushedPub, pushedPEM, _ := NewClientKey()
	dial := func(user string, keyPEM []byte) (string, error) {
		signer, err := ssh.ParsePrivateKey(keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		hk, _, _, _, _ := ssh.ParseAuthorizedKey([]byte(vm.Endpoint.HostKey))
		cl, err := ssh.Dial("tcp", vm.Endpoint.Addr(), &ssh.ClientConfig{User: user, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
			HostKeyCallback: ssh.FixedHostKey(hk), Timeout: 5 * time.Second})
		if err != nil {
			return "", err
		}
		defer cl.Close()
		s, err := cl.NewSession()
		if err != nil {
			return "", err
		}
		out, err := s.CombinedOutput("echo hi from $(basename $PWD)")
		return string(out), err
	}
	pushed := string(ssh.MarshalAuthorizedKey(pushedPub))
	steps := []struct {
		name    string
		do      func()
		user    string
		key     []byte
		wantErr bool
	}{
		{"static key", nil, "ec2-user", staticPEM, false},
		{"static key, wrong user", nil, "root", staticPEM, true},
		{"unpushed key", nil, "ec2-user", pushedPEM, true},
		{"pushed key", func() {
			if err := c.PushSSHKey(vm.ID, "ec2-user", pushed); err != nil {
				t.Fatal(err)
			}
		}, "ec2-user", pushedPEM, false},
		{"pushed key expired", func() { clock.Advance(61 * time.Second) }, "ec2-user", pushedPEM, true},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		out, err := dial(s.user, s.key)
		if (err != nil) != s.wantErr {
			t.Errorf("%s: %q, %v; want error %v", s.name, out, err, s.wantErr)
		}
		if err == nil && out != "hi from "+vm.ID+"\n" {
			t.Errorf("%s: output %q", s.name, out)
		}
	}
	if _, err := c.Terminate("g", []string{vm.ID}, true, "test"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", vm.Endpoint.Addr()); err == nil {
		conn.Close()
		t.Error("terminated VM still accepts connections")
	}
}
