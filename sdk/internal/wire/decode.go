package wire

import (
	"errors"
	"fmt"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// The host decodes a plugin's answers with the functions below. A plugin is a separate
// program, possibly buggy: an answer that breaks the contract is an error that names
// the problem, never a panic and never a value the host would act on wrongly.

// Instance is one entry of a plugin's Update answer.
type Instance struct {
	ID    string
	State provider.State
}

// InstancesFromPB checks a plugin's listing. Every instance must have an ID and a valid
// state; otherwise the whole listing is refused, so that a bad answer changes nothing
// (an instance left out would be taken as gone).
func InstancesFromPB(resp *pb.UpdateResponse) ([]Instance, error) {
	out := make([]Instance, 0, len(resp.GetInstances()))
	for i, in := range resp.GetInstances() {
		if in.GetId() == "" {
			return nil, fmt.Errorf("the plugin reported instance #%d without an ID", i+1)
		}
		s, ok := StateFromPB(in.GetState())
		if !ok {
			return nil, fmt.Errorf("the plugin reported instance %q in invalid state %v", in.GetId(), in.GetState())
		}
		out = append(out, Instance{ID: in.GetId(), State: s})
	}
	return out, nil
}

// InfoFromInitPB converts Init's answer; a negative MaxSize is refused.
func InfoFromInitPB(resp *pb.InitResponse) (provider.ProviderInfo, error) {
	info := InfoFromPB(resp.GetInfo())
	if resp.GetInfo().GetMaxSize() < 0 {
		return info, fmt.Errorf("the plugin reported max_size %d; want 0 (no limit of its own) or more", resp.GetInfo().GetMaxSize())
	}
	return info, nil
}

// IncreaseFromPB converts Increase's answer to a request for delta instances: how
// many were accepted, and the failures. A count outside 0..delta is reported and
// clamped.
func IncreaseFromPB(resp *pb.IncreaseResponse, delta int) (int, error) {
	n := resp.GetSucceeded()
	err := ErrorFromDetail(resp.GetFailures())
	if n < 0 || n > int64(delta) {
		err = errors.Join(fmt.Errorf("the plugin reported %d instances accepted of %d requested", n, delta), err)
		n = min(max(n, 0), int64(delta))
	}
	return int(n), err
}

// BatchFromPB converts the answer of Decrease, Suspend or Resume for the requested
// IDs: the IDs the plugin accepted, each once, and the failures. An ID that was not
// requested is left out and reported: the host never acts on an instance it did not
// name.
func BatchFromPB(requested, succeeded []string, failures *pb.ErrorDetail) ([]string, error) {
	asked := make(map[string]bool, len(requested))
	for _, id := range requested {
		asked[id] = true
	}
	err := ErrorFromDetail(failures)
	seen := make(map[string]bool, len(succeeded))
	var done, foreign []string
	for _, id := range succeeded {
		switch {
		case !asked[id]:
			foreign = append(foreign, id)
		case !seen[id]:
			seen[id] = true
			done = append(done, id)
		}
	}
	if len(foreign) > 0 {
		const show = 5
		more := ""
		if len(foreign) > show {
			more = fmt.Sprintf(" and %d more", len(foreign)-show)
			foreign = foreign[:show]
		}
		err = errors.Join(fmt.Errorf("the plugin reported instances it was not given as done: %q%s", foreign, more), err)
	}
	return done, err
}
