"""The RL methods' shared parts: PPO math (``ppo_core``), the policy with its value head (``policy``), rollouts
(``rollout``), the RL task on the training runner (``loop``) and the critic-free advantages (``critic_free``)."""
