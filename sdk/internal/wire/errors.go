package wire

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/flotilla-ci/flotilla/sdk/internal/pb/fleeting/v1"
	"github.com/flotilla-ci/flotilla/sdk/provider"
)

// kinds lists the sentinels in the order used to classify an error that wraps several;
// the first match names the kind.
var kinds = []struct {
	name string
	err  error
	code codes.Code
}{
	{"INVALID_CONFIG", provider.ErrInvalidConfig, codes.InvalidArgument},
	{"NOT_SUPPORTED", provider.ErrNotSupported, codes.Unimplemented},
	{"NOT_FOUND", provider.ErrNotFound, codes.NotFound},
	{"CAPACITY", provider.ErrCapacity, codes.ResourceExhausted},
	{"INSTANCE_UNHEALTHY", provider.ErrInstanceUnhealthy, codes.FailedPrecondition},
}

// leaves flattens errors.Join trees into their branches, so that each problem of a
// joined error keeps its own kind on the wire.
func leaves(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			if e != nil {
				out = append(out, leaves(e)...)
			}
		}
		return out
	}
	return []error{err}
}

func kindOf(err error) string {
	for _, k := range kinds {
		if errors.Is(err, k.err) {
			return k.name
		}
	}
	return ""
}

// DetailFromError describes err (possibly joined) for the wire; nil gives nil.
func DetailFromError(err error) *pb.ErrorDetail {
	if err == nil {
		return nil
	}
	d := &pb.ErrorDetail{}
	for _, e := range leaves(err) {
		d.Errors = append(d.Errors, &pb.Error{Kind: kindOf(e), Message: e.Error()})
	}
	return d
}

// ToStatus turns a plugin's error into a gRPC status error carrying an ErrorDetail.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	code := codes.Unknown
	switch {
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	default:
		for _, k := range kinds {
			if errors.Is(err, k.err) {
				code = k.code
				break
			}
		}
	}
	st := status.New(code, err.Error())
	if withDetail, derr := st.WithDetails(DetailFromError(err)); derr == nil {
		st = withDetail
	}
	return st.Err()
}

// remoteError is one failure reported by a plugin; it unwraps to the sentinel of its
// kind so that errors.Is works in the host.
type remoteError struct {
	msg  string
	kind error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.kind }

// ErrorFromDetail rebuilds the error a plugin described; nil or empty gives nil.
func ErrorFromDetail(d *pb.ErrorDetail) error {
	var errs []error
	for _, e := range d.GetErrors() {
		var sentinel error
		for _, k := range kinds {
			if k.name == e.GetKind() {
				sentinel = k.err
			}
		}
		errs = append(errs, &remoteError{msg: e.GetMessage(), kind: sentinel})
	}
	if len(errs) == 1 {
		return errs[0]
	}
	return errors.Join(errs...)
}

// FromStatus turns an error from a gRPC call back into the plugin's error: sentinel
// kinds are restored from the ErrorDetail, UNIMPLEMENTED (a plugin built before an RPC
// existed) becomes ErrNotSupported, and cancellation becomes the context's error.
func FromStatus(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, context.Cause(ctx))
		}
		return fmt.Errorf("%s: %w", method, err)
	}
	switch st.Code() {
	case codes.Canceled, codes.DeadlineExceeded:
		// gRPC gives the plugin the caller's deadline, rounded: the plugin may give up
		// (or reset the stream) a moment before the caller's own timer fires. A call
		// that ended at its deadline is reported as the caller's context error.
		if dl, ok := ctx.Deadline(); ok && ctx.Err() == nil && time.Until(dl) < deadlineSlack {
			<-ctx.Done()
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, context.Cause(ctx))
		}
		if st.Code() == codes.DeadlineExceeded {
			return fmt.Errorf("%s: plugin: %w", method, context.DeadlineExceeded)
		}
		return fmt.Errorf("%s: plugin: %w", method, context.Canceled)
	case codes.Unavailable:
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", method, context.Cause(ctx))
		}
	}
	for _, d := range st.Details() {
		if detail, ok := d.(*pb.ErrorDetail); ok && len(detail.GetErrors()) > 0 {
			return ErrorFromDetail(detail)
		}
	}
	if st.Code() == codes.Unimplemented {
		return fmt.Errorf("%s: %w", method, provider.ErrNotSupported)
	}
	return fmt.Errorf("%s: %s", method, st.Message())
}

// deadlineSlack is how close to the caller's deadline a plugin-side deadline error
// counts as the caller's own.
const deadlineSlack = 50 * time.Millisecond
