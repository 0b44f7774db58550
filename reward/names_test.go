package reward_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/dp2osr/dp2o/reward"
)

// ExpandNames: groups expand to the default reward's metrics, repeats go,
// order stays, and an empty list is an error.
func TestExpandNames(t *testing.T) {
	got, err := reward.ExpandNames(" psnr, fr ,lpips,nr")
	require.NoError(t, err)
	want := append(append([]string{"psnr"}, reward.DefaultFR...), reward.DefaultNR...)
	require.Equal(t, want, got)
	got, err = reward.ExpandNames("reward")
	require.NoError(t, err)
	require.Equal(t, append(append([]string{}, reward.DefaultFR...), reward.DefaultNR...), got)
	got, err = reward.ExpandNames("all")
	require.NoError(t, err)
	require.ElementsMatch(t, reward.Names(), got)
	_, err = reward.ExpandNames(" , ")
	require.ErrorContains(t, err, "empty")
}
