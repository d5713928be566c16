package gitlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// ResetToken replaces a runner's authentication token with a new one (POST
// /api/v4/runners/reset_authentication_token, authenticated by the current token),
// as `gitlab-runner reset-token` does. The old token stops working at once.
func (c *Client) ResetToken(ctx context.Context, token string) (RegisteredRunner, error) {
	const op = "reset runner token"
	resp, body, err := c.doJSON(ctx, op, http.MethodPost, "runners/reset_authentication_token", map[string]string{"token": token})
	if err != nil {
		return RegisteredRunner{}, err
	}
	return decodeReset(op, resp, body)
}

// ResetTokenByID is ResetToken for a runner whose token is lost or expired: it is
// authenticated by a personal access token with the manage_runner (or api) scope
// (POST /api/v4/runners/:id/reset_authentication_token).
func (c *Client) ResetTokenByID(ctx context.Context, id int64, pat string) (RegisteredRunner, error) {
	const op = "reset runner token"
	resp, body, err := c.do(ctx, op, http.MethodPost, "runners/"+strconv.FormatInt(id, 10)+"/reset_authentication_token",
		http.Header{"PRIVATE-TOKEN": {pat}, "Accept": {"application/json"}}, nil)
	if err != nil {
		return RegisteredRunner{}, err
	}
	out, err := decodeReset(op, resp, body)
	out.ID = id
	return out, err
}

func decodeReset(op string, resp *http.Response, body []byte) (RegisteredRunner, error) {
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return RegisteredRunner{}, statusErr(op, resp, body)
	}
	var out RegisteredRunner
	if err := json.Unmarshal(body, &out); err != nil {
		return out, fmt.Errorf("%s: decode response: %w", op, err)
	}
	if out.Token == "" {
		return out, fmt.Errorf("%s: GitLab's answer has no token", op)
	}
	return out, nil
}
