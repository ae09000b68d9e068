// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title Stake token for devnets and tests.
/// @notice Stands in for the $AI token the paper bonds: the registry takes any ERC-20 fixed at
/// deployment, so devnets deploy this one and mint to their operators.
contract FaiTestToken is ERC20, Ownable {
    constructor(address owner_, uint256 initialSupply) ERC20("FAI Test Token", "tFAI") Ownable(owner_) {
        _mint(owner_, initialSupply);
    }

    /// @notice Devnet faucet; only the deployer's chosen owner can inflate supply.
    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
