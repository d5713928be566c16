package simulate

import (
	"sort"
	"time"
)

// ClairvoyantFloor is the cost floor C* of benchmarks.md §2 in instance-seconds: what
// a policy that knows the future pays to run jobs with zero wait, each instance
// started exactly boot before its first job and billed per second.
//
//   - maxUseCount 1 (ephemeral instances): C* = Σ (B + dᵢ).
//   - Otherwise job j may reuse the instance of an earlier job i that ended gap ≥ 0
//     before aⱼ, at a cost of min(gap, B) (keep it, or let it go and boot anew); a job
//     that reuses nothing starts a chain and costs B. C* = Σ dᵢ + the cheapest choice
//     of links.
//
// The links are chosen by a minimum-cost matching of job ends to job starts. Because
// a link's cost min(gap, B) is concave in the gap, crossing links can always be
// uncrossed without raising the cost, so some optimal matching is nested, and the
// nested matching in which each start takes the most recent unused end (a stack) is
// optimal: O(n log n) instead of a min-cost flow. ClairvoyantFloorFlow computes the
// same number by min-cost flow over the K nearest candidates; the tests check that
// the two agree.
//
// With capacity_per_instance c > 1 the floor is C*/c computed per slot: every slot of
// an instance is a chain of the one-slot problem that lives as long as the instance,
// so c × instance-seconds ≥ C*. A max_use_count above 1 is relaxed to unlimited
// (a lower bound still). For a random boot time, B is its mean.
func ClairvoyantFloor(jobs []Job, boot time.Duration, capacity, maxUseCount int) time.Duration {
	if len(jobs) == 0 {
		return 0
	}
	capacity = max(capacity, 1)
	var sumD time.Duration
	for _, j := range jobs {
		sumD += j.Duration
	}
	if maxUseCount == 1 {
		return sumD + time.Duration(len(jobs))*boot
	}
	type ev struct {
		at    time.Duration
		start bool
	}
	evs := make([]ev, 0, 2*len(jobs))
	for _, j := range jobs {
		evs = append(evs, ev{j.Arrival, true}, ev{j.Arrival + j.Duration, false})
	}
	// Ends before starts at the same instant: a gap of 0 is a valid link.
	sort.Slice(evs, func(a, b int) bool {
		if evs[a].at != evs[b].at {
			return evs[a].at < evs[b].at
		}
		return !evs[a].start && evs[b].start
	})
	var links time.Duration
	var stack []time.Duration
	for _, e := range evs {
		if !e.start {
			stack = append(stack, e.at)
			continue
		}
		if n := len(stack); n > 0 && e.at-stack[n-1] < boot {
			links += e.at - stack[n-1]
			stack = stack[:n-1]
			continue
		}
		// The newest end is too old to be worth keeping, so are all older ones, and
		// they only get older: drop them.
		stack = stack[:0]
		links += boot
	}
	return (sumD + links) / time.Duration(capacity)
}

// ClairvoyantFloorFlow computes the one-slot, unlimited-reuse C* of ClairvoyantFloor
// by successive shortest paths on the min-cost flow network of benchmarks.md: a unit
// from the source through each job end to one of its k nearest later starts (cost
// min(gap, B)), or through a "boot" node to any start (cost B). It is exact for k ≥ n
// and O(n² k) or worse, so it serves as a reference on small traces.
func ClairvoyantFloorFlow(jobs []Job, boot time.Duration, k int) time.Duration {
	n := len(jobs)
	if n == 0 {
		return 0
	}
	// Nodes: 0 source, 1 sink, 2 boot, 3..3+n ends, 3+n..3+2n starts.
	src, snk, bootN := 0, 1, 2
	end := func(i int) int { return 3 + i }
	start := func(j int) int { return 3 + n + j }
	g := newFlowGraph(3 + 2*n)
	var sumD time.Duration
	for i, ji := range jobs {
		sumD += ji.Duration
		g.add(src, end(i), 1, 0)
		g.add(bootN, start(i), 1, int64(boot))
		g.add(start(i), snk, 1, 0)
		e := ji.Arrival + ji.Duration
		type cand struct {
			j   int
			gap time.Duration
		}
		var cs []cand
		for j, jj := range jobs {
			if j != i && jj.Arrival >= e {
				cs = append(cs, cand{j, jj.Arrival - e})
			}
		}
		sort.Slice(cs, func(a, b int) bool {
			if cs[a].gap != cs[b].gap {
				return cs[a].gap < cs[b].gap
			}
			return cs[a].j < cs[b].j
		})
		for _, c := range cs[:min(k, len(cs))] {
			g.add(end(i), start(c.j), 1, int64(min(c.gap, boot)))
		}
	}
	g.add(src, bootN, n, 0)
	cost := g.minCostFlow(src, snk, n)
	return sumD + time.Duration(cost)
}

type flowEdge struct {
	to, rev int
	capa    int
	cost    int64
}

type flowGraph struct{ adj [][]flowEdge }

func newFlowGraph(n int) *flowGraph { return &flowGraph{adj: make([][]flowEdge, n)} }

func (g *flowGraph) add(u, v, capa int, cost int64) {
	g.adj[u] = append(g.adj[u], flowEdge{v, len(g.adj[v]), capa, cost})
	g.adj[v] = append(g.adj[v], flowEdge{u, len(g.adj[u]) - 1, 0, -cost})
}

// minCostFlow sends want units from s to t along successive shortest paths
// (Bellman-Ford, so residual edges may have negative costs) and returns the cost.
func (g *flowGraph) minCostFlow(s, t, want int) int64 {
	const inf = int64(1) << 62
	var total int64
	n := len(g.adj)
	for want > 0 {
		dist := make([]int64, n)
		prevN := make([]int, n)
		prevE := make([]int, n)
		for i := range dist {
			dist[i] = inf
		}
		dist[s] = 0
		for changed, round := true, 0; changed && round < n; round++ {
			changed = false
			for u := range n {
				if dist[u] == inf {
					continue
				}
				for ei, e := range g.adj[u] {
					if e.capa > 0 && dist[u]+e.cost < dist[e.to] {
						dist[e.to], prevN[e.to], prevE[e.to] = dist[u]+e.cost, u, ei
						changed = true
					}
				}
			}
		}
		if dist[t] == inf {
			break
		}
		f := want
		for v := t; v != s; v = prevN[v] {
			f = min(f, g.adj[prevN[v]][prevE[v]].capa)
		}
		for v := t; v != s; v = prevN[v] {
			e := &g.adj[prevN[v]][prevE[v]]
			e.capa -= f
			g.adj[v][e.rev].capa += f
		}
		want -= f
		total += int64(f) * dist[t]
	}
	return total
}

// ZeroIdleWait is the zero-idle wait floor of benchmarks.md §2: with no idle capacity
// every job waits at least a boot plus the decision latency, which is 0 on the
// simulator's virtual clock. It returns the median and the 95th percentile of that
// wait.
func ZeroIdleWait(b BootTime) (p50, p95 time.Duration) {
	return b.Quantile(0.5), b.Quantile(0.95)
}
