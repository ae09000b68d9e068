// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

/// @title FAI DSO registry: bonded operators, signed peer advertisements, slashing.
/// @notice Nodes find each other through advertisements posted here; the bond makes
/// provable misbehaviour (equivocation, or fraud agreed by a stake supermajority) costly.
/// @dev Multiaddrs are not stored: they are emitted in `AdvertisementPosted` and only their
/// hash is kept, so renewals stay cheap. Clients read the latest event whose hash matches
/// `operatorInfo(op).multiaddrsHash`. The Ed25519 peer key cannot be checked on-chain (no
/// precompile); peers check possession off-chain against a challenge bound to this domain.
contract DSORegistry is Ownable2Step, Pausable, EIP712 {
    using SafeERC20 for IERC20;

    // ---------------------------------------------------------------- types

    /// @dev Packed so that liveness needs two storage slots and a renewal rewrites one.
    struct Operator {
        // slot 0: bond and list membership
        uint96 stake; // bonded, counts for liveness and fraud votes
        uint96 unbonding; // waiting for the delay; still slashable
        bool registered; // in the operator list (holds bonded or unbonding stake)
        bool jailed; // permanent: a jailed operator can only leave, never come back
        uint16 listIndex; // position in the operator list while registered
        // slot 1: rewritten by every renewal
        uint40 adExpiry; // advertisement valid while block.timestamp < adExpiry
        uint64 adNonce; // next advertisement nonce expected (never reset)
        uint40 adBlock; // block of the current advertisement's AdvertisementPosted event
        uint40 unbondReadyAt; // when `unbonding` may be withdrawn
        // slots 2, 3
        bytes32 peerKey; // Ed25519 public key of the node (libp2p identity)
        bytes32 multiaddrsHash; // keccak256(abi.encode(string[] multiaddrs)) of the current ad
    }

    /// @dev Header every node signs for each batch it publishes (fixed interface with fai_core).
    struct BatchHeader {
        bytes32 peerKey;
        uint64 seq;
        bytes32 cidDigest;
        uint64 timestampMs;
    }

    struct FraudCase {
        address target;
        uint40 openedAt;
        uint40 openedBlock; // block of FraudCaseOpened, which carries the snapshot
        bool executed;
        uint112 snapshotLiveStake; // live stake of every operator (target included) at opening
        uint112 reportedStake; // sum of reporter weights
        uint32 reporters;
        bytes32 evidenceHash;
        bytes32 snapshotHash; // keccak256(abi.encode(address[] operators, uint256[] weights))
    }

    // ------------------------------------------------------------ constants

    bytes32 public constant ADVERTISEMENT_TYPEHASH = keccak256(
        "PeerAdvertisement(address operator,bytes32 peerKey,bytes32 multiaddrsHash,uint64 expiry,uint64 nonce)"
    );
    bytes32 public constant BATCH_HEADER_TYPEHASH =
        keccak256("BatchHeader(bytes32 peerKey,uint64 seq,bytes32 cidDigest,uint64 timestampMs)");

    /// @notice Advertisements expire at most this far ahead (paper section 3.2: 24 h).
    uint256 public constant MAX_AD_TTL = 24 hours;
    uint256 public constant MAX_MULTIADDRS = 8;
    uint256 public constant MAX_MULTIADDR_BYTES = 256;
    /// @notice Bounds the fraud snapshot loop so a report always fits in a block. Counts only
    /// operators holding bonded or unbonding stake: leaving frees the place.
    uint256 public constant MAX_OPERATORS = 256;
    uint256 public constant BPS = 10_000;
    /// @notice Reporter reward can never exceed half of what is slashed.
    uint256 public constant MAX_REWARD_BPS = 5_000;

    // ------------------------------------------------------------ immutables

    IERC20 public immutable stakeToken;
    uint256 public immutable minBond;
    uint256 public immutable unbondingDelay;
    uint256 public immutable slashBps;
    uint256 public immutable reporterRewardBps;

    // ---------------------------------------------------------------- state

    mapping(address => Operator) private _operators;
    address[] private _operatorList;
    /// @notice A peer key is bound to the first operator that advertises it, for good.
    mapping(bytes32 => address) public peerKeyOwner;
    /// @notice The operator's current header/advertisement signer (zero: the operator key).
    mapping(address => address) public signerOf;
    /// @notice Operator a signer was ever authorised for; never deleted, so headers signed by
    /// a rotated-out signer stay slashable.
    mapping(address => address) public signerOperator;
    mapping(address => mapping(bytes32 => mapping(uint64 => bool))) private _equivocationSlashed;
    mapping(bytes32 => FraudCase) private _cases;
    mapping(bytes32 => mapping(address => bool)) private _reported;
    /// @notice Slashed tokens not paid out as rewards; only the owner can sweep them.
    uint256 public slashedPot;

    // --------------------------------------------------------------- events

    event Registered(address indexed operator, uint256 stake);
    event Deregistered(address indexed operator);
    event StakeAdded(address indexed operator, uint256 amount, uint256 stake);
    event UnbondRequested(
        address indexed operator, uint256 amount, uint256 unbonding, uint256 readyAt
    );
    event Withdrawn(address indexed operator, uint256 amount);
    event SignerSet(address indexed operator, address indexed signer, address previous);
    event PeerKeyBound(bytes32 indexed peerKey, address indexed operator);
    event AdvertisementPosted(
        address indexed operator,
        bytes32 indexed peerKey,
        uint64 expiry,
        uint64 nonce,
        bytes32 multiaddrsHash,
        string[] multiaddrs,
        address relayer
    );
    event Slashed(address indexed operator, uint256 amount, uint256 reward, address indexed rewardee);
    event Jailed(address indexed operator);
    event EquivocationProven(
        address indexed operator,
        bytes32 indexed peerKey,
        uint64 indexed seq,
        bytes32 cidDigestA,
        bytes32 cidDigestB,
        address reporter
    );
    event FraudCaseOpened(
        bytes32 indexed caseId,
        address indexed target,
        bytes32 evidenceHash,
        uint256 snapshotLiveStake,
        address[] snapshotOperators,
        uint256[] snapshotWeights
    );
    event FraudReported(
        bytes32 indexed caseId, address indexed reporter, uint256 weight, uint256 reportedStake
    );
    event FraudCaseExecuted(bytes32 indexed caseId, address indexed target, uint256 slashed);
    event SlashedPotSwept(address indexed to, uint256 amount);

    // --------------------------------------------------------------- errors

    error InvalidConfig(string what);
    error ZeroAmount();
    error BelowMinimumBond(uint256 stake, uint256 minimum);
    error AlreadyRegistered(address operator);
    error NotRegistered(address operator);
    error OperatorIsJailed(address operator);
    error RegistryFull(uint256 maxOperators);
    error InsufficientStake(uint256 requested, uint256 available);
    error NothingToWithdraw(address operator);
    error UnbondingNotReady(uint256 readyAt, uint256 nowTs);
    error ExpiryNotInFuture(uint256 expiry, uint256 nowTs);
    error ExpiryTooFar(uint256 expiry, uint256 maxExpiry);
    error InvalidNonce(uint256 expected, uint256 given);
    error InvalidSignature(address expectedSigner, address recovered);
    error ZeroPeerKey();
    error PeerKeyTaken(bytes32 peerKey, address owner);
    error StakeTooLowToBindKey(uint256 stake, uint256 minimum);
    error BadMultiaddrCount(uint256 count, uint256 maximum);
    error BadMultiaddrLength(uint256 index, uint256 length, uint256 maximum);
    error SignerTaken(address signer, address operator);
    error NotEquivocation();
    error UnknownPeerKey(bytes32 peerKey);
    error AlreadySlashed(address operator, bytes32 peerKey, uint64 seq);
    error ReporterNotLive(address reporter);
    error SelfReport();
    error TargetJailed(address target);
    error FraudCaseClosed(bytes32 caseId);
    error FraudCaseExpired(bytes32 caseId, uint256 deadline);
    error AlreadyReported(bytes32 caseId, address reporter);
    error SnapshotMismatch(bytes32 caseId);
    error NotInSnapshot(bytes32 caseId, address reporter);
    error RenounceDisabled();
    error ZeroAddress();

    // ---------------------------------------------------------- constructor

    constructor(
        IERC20 token,
        uint256 minBond_,
        uint256 unbondingDelay_,
        uint256 slashBps_,
        uint256 reporterRewardBps_,
        address owner_
    ) Ownable(owner_) EIP712("FAI DSORegistry", "1") {
        if (address(token) == address(0)) revert InvalidConfig("token");
        if (minBond_ == 0 || minBond_ > type(uint96).max) revert InvalidConfig("minBond");
        if (unbondingDelay_ == 0 || unbondingDelay_ > 365 days) {
            revert InvalidConfig("unbondingDelay");
        }
        if (slashBps_ == 0 || slashBps_ > BPS) revert InvalidConfig("slashBps");
        if (reporterRewardBps_ > MAX_REWARD_BPS) revert InvalidConfig("reporterRewardBps");
        stakeToken = token;
        minBond = minBond_;
        unbondingDelay = unbondingDelay_;
        slashBps = slashBps_;
        reporterRewardBps = reporterRewardBps_;
    }

    // --------------------------------------------------------------- owner

    /// @notice Stops new operators from joining; nothing else (see `register`).
    function pause() external onlyOwner {
        _pause();
    }

    function unpause() external onlyOwner {
        _unpause();
    }

    /// @notice Disabled: an ownerless registry could never be unpaused or swept.
    function renounceOwnership() public pure override {
        revert RenounceDisabled();
    }

    /// @notice Moves slashed tokens out; rewards were already paid at slashing time.
    function sweepSlashed(address to) external onlyOwner {
        if (to == address(0)) revert ZeroAddress();
        uint256 amount = slashedPot;
        if (amount == 0) revert ZeroAmount();
        slashedPot = 0;
        emit SlashedPotSwept(to, amount);
        stakeToken.safeTransfer(to, amount);
    }

    // ------------------------------------------------------------- bonding

    /// @notice Joins with `amount` >= minBond. The only function the owner's pause stops.
    /// An operator that left (withdrew everything) may register again unless it was jailed.
    function register(uint256 amount) external whenNotPaused {
        Operator storage op = _operators[msg.sender];
        if (op.registered) revert AlreadyRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (amount < minBond) revert BelowMinimumBond(amount, minBond);
        uint256 index = _operatorList.length;
        if (index >= MAX_OPERATORS) revert RegistryFull(MAX_OPERATORS);
        op.registered = true;
        op.stake = SafeCast.toUint96(amount);
        op.listIndex = uint16(index);
        _operatorList.push(msg.sender);
        emit Registered(msg.sender, amount);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Tops up the bond; after a full unbond the top-up must reach the minimum again.
    function addStake(uint256 amount) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 newStake = uint256(op.stake) + amount;
        if (newStake < minBond) revert BelowMinimumBond(newStake, minBond);
        op.stake = SafeCast.toUint96(newStake);
        emit StakeAdded(msg.sender, amount, newStake);
        stakeToken.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @notice Starts (or extends) the exit clock; the amount stays slashable until withdrawn.
    /// @dev What remains bonded must be zero or at least the minimum, so no dust operators.
    function requestUnbond(uint256 amount) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (amount == 0) revert ZeroAmount();
        uint256 stake = op.stake;
        if (amount > stake) revert InsufficientStake(amount, stake);
        uint256 remaining = stake - amount;
        if (remaining != 0 && remaining < minBond) revert BelowMinimumBond(remaining, minBond);
        uint256 readyAt = block.timestamp + unbondingDelay;
        uint256 unbonding = uint256(op.unbonding) + amount;
        op.stake = SafeCast.toUint96(remaining);
        op.unbonding = SafeCast.toUint96(unbonding);
        op.unbondReadyAt = SafeCast.toUint40(readyAt);
        emit UnbondRequested(msg.sender, amount, unbonding, readyAt);
    }

    /// @notice Never paused: operators can always leave once the delay has passed. Leaving
    /// with nothing bonded removes the operator from the list (frees its place).
    function withdraw() external {
        Operator storage op = _operators[msg.sender];
        uint256 amount = op.unbonding;
        if (amount == 0) revert NothingToWithdraw(msg.sender);
        if (block.timestamp < op.unbondReadyAt) {
            revert UnbondingNotReady(op.unbondReadyAt, block.timestamp);
        }
        op.unbonding = 0;
        emit Withdrawn(msg.sender, amount);
        if (op.stake == 0) _removeOperator(msg.sender);
        stakeToken.safeTransfer(msg.sender, amount);
    }

    /// @notice Authorises `signer` to sign batch headers and advertisements for the caller,
    /// replacing the previous signer for advertisements. Withdrawal stays with the operator
    /// key. Headers signed by any signer ever authorised stay slashable for this operator.
    function setSigner(address signer) external {
        Operator storage op = _operators[msg.sender];
        if (!op.registered) revert NotRegistered(msg.sender);
        if (op.jailed) revert OperatorIsJailed(msg.sender);
        if (signer == address(0)) revert ZeroAddress();
        address bound = signerOperator[signer];
        if (bound == address(0)) {
            signerOperator[signer] = msg.sender;
        } else if (bound != msg.sender) {
            revert SignerTaken(signer, bound);
        }
        address previous = signerOf[msg.sender];
        signerOf[msg.sender] = signer;
        emit SignerSet(msg.sender, signer, previous);
    }

    // ------------------------------------------------------ advertisements

    /// @notice Posts or renews an advertisement signed by `operator` (or its current signer);
    /// anyone may relay it. Not stopped by the pause: renewals keep operators live.
    /// @dev The nonce must equal the operator's next nonce, so each signature is usable once;
    /// the EIP-712 domain binds it to this chain id and this contract.
    function postAdvertisement(
        address operator,
        bytes32 peerKey,
        string[] calldata multiaddrs,
        uint64 expiry,
        uint64 nonce,
        bytes calldata signature
    ) external {
        Operator storage op = _operators[operator];
        if (!op.registered) revert NotRegistered(operator);
        if (op.jailed) revert OperatorIsJailed(operator);
        if (peerKey == bytes32(0)) revert ZeroPeerKey();
        _checkMultiaddrs(multiaddrs);
        if (expiry <= block.timestamp) revert ExpiryNotInFuture(expiry, block.timestamp);
        if (expiry > block.timestamp + MAX_AD_TTL) {
            revert ExpiryTooFar(expiry, block.timestamp + MAX_AD_TTL);
        }
        if (nonce != op.adNonce) revert InvalidNonce(op.adNonce, nonce);

        bytes32 maHash = keccak256(abi.encode(multiaddrs));
        _requireAdSigner(hashAdvertisement(operator, peerKey, maHash, expiry, nonce), signature, operator);

        address keyOwner = peerKeyOwner[peerKey];
        if (keyOwner == address(0)) {
            // Binding is for good: only a bonded operator may claim a key (no free squatting).
            if (op.stake < minBond) revert StakeTooLowToBindKey(op.stake, minBond);
            peerKeyOwner[peerKey] = operator;
            emit PeerKeyBound(peerKey, operator);
        } else if (keyOwner != operator) {
            revert PeerKeyTaken(peerKey, keyOwner);
        }

        op.adExpiry = uint40(expiry);
        op.adNonce = nonce + 1;
        op.adBlock = uint40(block.number);
        op.peerKey = peerKey;
        op.multiaddrsHash = maHash;
        emit AdvertisementPosted(operator, peerKey, expiry, nonce, maHash, multiaddrs, msg.sender);
    }

    // ------------------------------------------------------------- slashing

    /// @notice Anyone proves equivocation with two headers for one (peerKey, seq) whose
    /// cid digests differ, each signed by the operator owning the peer key or by a signer
    /// that operator ever authorised. Slashes, rewards the caller, jails the operator.
    function slashEquivocation(
        BatchHeader calldata a,
        bytes calldata sigA,
        BatchHeader calldata b,
        bytes calldata sigB
    ) external {
        if (a.peerKey != b.peerKey || a.seq != b.seq || a.cidDigest == b.cidDigest) {
            revert NotEquivocation();
        }
        address operator = peerKeyOwner[a.peerKey];
        if (operator == address(0)) revert UnknownPeerKey(a.peerKey);
        if (_equivocationSlashed[operator][a.peerKey][a.seq]) {
            revert AlreadySlashed(operator, a.peerKey, a.seq);
        }
        _requireHeaderSigner(hashBatchHeader(a), sigA, operator);
        _requireHeaderSigner(hashBatchHeader(b), sigB, operator);

        _equivocationSlashed[operator][a.peerKey][a.seq] = true;
        emit EquivocationProven(operator, a.peerKey, a.seq, a.cidDigest, b.cidDigest, msg.sender);
        (, uint256 reward) = _slash(operator, reporterRewardBps, msg.sender, true);
        if (reward != 0) stakeToken.safeTransfer(msg.sender, reward);
    }

    /// @notice A live operator reports `target` for the fraud described by `evidenceHash`.
    /// The first report opens a case and snapshots every live operator's stake (the target's
    /// included) into `FraudCaseOpened`; later reporters pass that snapshot back
    /// (`snapshotOperators`, `snapshotWeights`; the opener passes empty arrays) and count
    /// min(snapshot weight, current stake). Once reported weight exceeds two thirds of the
    /// snapshotted live stake, the target is slashed once, without jailing.
    /// @dev Reports close `unbondingDelay` after opening: stake counted in a report cannot be
    /// withdrawn and re-staked elsewhere before the case closes, so no token counts twice.
    function reportFraud(
        address target,
        bytes32 evidenceHash,
        address[] calldata snapshotOperators,
        uint256[] calldata snapshotWeights
    ) external {
        if (target == msg.sender) revert SelfReport();
        if (!isLive(msg.sender)) revert ReporterNotLive(msg.sender);
        bytes32 caseId = fraudCaseId(target, evidenceHash);
        FraudCase storage c = _cases[caseId];
        if (c.executed) revert FraudCaseClosed(caseId);
        Operator storage t = _operators[target];
        if (!t.registered) revert NotRegistered(target);
        if (t.jailed) revert TargetJailed(target);
        uint256 weight;
        if (c.openedAt == 0) {
            weight = _openCase(c, caseId, target, evidenceHash);
        } else {
            uint256 deadline = uint256(c.openedAt) + unbondingDelay;
            if (block.timestamp >= deadline) revert FraudCaseExpired(caseId, deadline);
            if (_reported[caseId][msg.sender]) revert AlreadyReported(caseId, msg.sender);
            weight = _snapshotWeight(c.snapshotHash, caseId, snapshotOperators, snapshotWeights);
            uint256 current = _operators[msg.sender].stake;
            if (current < weight) weight = current;
        }
        _reported[caseId][msg.sender] = true;
        uint256 reported = uint256(c.reportedStake) + weight;
        c.reportedStake = uint112(reported); // <= snapshot total, which fits
        c.reporters += 1;
        emit FraudReported(caseId, msg.sender, weight, reported);

        if (3 * reported > 2 * uint256(c.snapshotLiveStake)) {
            c.executed = true;
            (uint256 slashed,) = _slash(target, 0, address(0), false);
            emit FraudCaseExecuted(caseId, target, slashed);
        }
    }

    // ---------------------------------------------------------------- views

    /// @notice Live = advertisement not expired, bonded stake at least the minimum, not jailed.
    function isLive(address operator) public view returns (bool) {
        Operator storage op = _operators[operator];
        return op.registered && !op.jailed && op.stake >= minBond && block.timestamp < op.adExpiry;
    }

    function operatorInfo(address operator) external view returns (Operator memory) {
        return _operators[operator];
    }

    /// @notice Operators holding bonded or unbonding stake (at most MAX_OPERATORS).
    function operatorCount() external view returns (uint256) {
        return _operatorList.length;
    }

    /// @notice Page through registered operators; out-of-range pages come back short or empty.
    /// The order changes when an operator leaves (swap-and-pop): read pages at one block.
    function operatorsPage(uint256 start, uint256 count) external view returns (address[] memory page) {
        uint256 n = _operatorList.length;
        if (start >= n) return new address[](0);
        uint256 end = count > n - start ? n : start + count;
        page = new address[](end - start);
        for (uint256 i = start; i < end; ++i) {
            page[i - start] = _operatorList[i];
        }
    }

    function liveStake() external view returns (uint256 total) {
        uint256 n = _operatorList.length;
        for (uint256 i = 0; i < n; ++i) {
            address a = _operatorList[i];
            if (isLive(a)) total += _operators[a].stake;
        }
    }

    function isEquivocationSlashed(address operator, bytes32 peerKey, uint64 seq)
        external
        view
        returns (bool)
    {
        return _equivocationSlashed[operator][peerKey][seq];
    }

    function fraudCaseId(address target, bytes32 evidenceHash) public pure returns (bytes32) {
        return keccak256(abi.encode(target, evidenceHash));
    }

    function fraudCase(bytes32 caseId) external view returns (FraudCase memory) {
        return _cases[caseId];
    }

    function hasReported(bytes32 caseId, address reporter) external view returns (bool) {
        return _reported[caseId][reporter];
    }

    function domainSeparator() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    function hashAdvertisement(
        address operator,
        bytes32 peerKey,
        bytes32 multiaddrsHash,
        uint64 expiry,
        uint64 nonce
    ) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(ADVERTISEMENT_TYPEHASH, operator, peerKey, multiaddrsHash, expiry, nonce))
        );
    }

    function hashBatchHeader(BatchHeader calldata h) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(BATCH_HEADER_TYPEHASH, h.peerKey, h.seq, h.cidDigest, h.timestampMs))
        );
    }

    // ------------------------------------------------------------ internals

    function _checkMultiaddrs(string[] calldata multiaddrs) private pure {
        uint256 n = multiaddrs.length;
        if (n == 0 || n > MAX_MULTIADDRS) revert BadMultiaddrCount(n, MAX_MULTIADDRS);
        for (uint256 i = 0; i < n; ++i) {
            uint256 len = bytes(multiaddrs[i]).length;
            if (len == 0 || len > MAX_MULTIADDR_BYTES) {
                revert BadMultiaddrLength(i, len, MAX_MULTIADDR_BYTES);
            }
        }
    }

    function _recover(bytes32 digest, bytes calldata signature)
        private
        pure
        returns (address recovered, bool ok)
    {
        ECDSA.RecoverError err;
        (recovered, err,) = ECDSA.tryRecoverCalldata(digest, signature);
        ok = err == ECDSA.RecoverError.NoError;
    }

    /// @dev Advertisements: the operator key or its current signer.
    function _requireAdSigner(bytes32 digest, bytes calldata signature, address operator) private view {
        (address recovered, bool ok) = _recover(digest, signature);
        if (!ok || (recovered != operator && recovered != signerOf[operator])) {
            revert InvalidSignature(operator, recovered);
        }
    }

    /// @dev Batch headers: the operator key or any signer it ever authorised.
    function _requireHeaderSigner(bytes32 digest, bytes calldata signature, address operator)
        private
        view
    {
        (address recovered, bool ok) = _recover(digest, signature);
        if (!ok || (recovered != operator && signerOperator[recovered] != operator)) {
            revert InvalidSignature(operator, recovered);
        }
    }

    /// @dev Snapshots every live operator's stake (bounded by MAX_OPERATORS) into an event and
    /// stores only its hash; returns the opener's weight.
    function _openCase(FraudCase storage c, bytes32 caseId, address target, bytes32 evidenceHash)
        private
        returns (uint256)
    {
        uint256 n = _operatorList.length;
        address[] memory ops = new address[](n);
        uint256[] memory weights = new uint256[](n);
        uint256 live;
        uint256 total;
        for (uint256 i = 0; i < n; ++i) {
            address a = _operatorList[i];
            if (isLive(a)) {
                uint256 s = _operators[a].stake;
                ops[live] = a;
                weights[live] = s;
                total += s;
                ++live;
            }
        }
        assembly ("memory-safe") {
            mstore(ops, live)
            mstore(weights, live)
        }
        c.target = target;
        c.openedAt = uint40(block.timestamp);
        c.openedBlock = uint40(block.number);
        c.snapshotLiveStake = uint112(total); // 256 x uint96 < 2^112
        c.evidenceHash = evidenceHash;
        c.snapshotHash = keccak256(abi.encode(ops, weights));
        emit FraudCaseOpened(caseId, target, evidenceHash, total, ops, weights);
        return _operators[msg.sender].stake;
    }

    /// @dev The caller's weight in the snapshot the reporter passed back, checked by hash.
    function _snapshotWeight(
        bytes32 snapshotHash,
        bytes32 caseId,
        address[] calldata ops,
        uint256[] calldata weights
    ) private view returns (uint256) {
        if (keccak256(abi.encode(ops, weights)) != snapshotHash) revert SnapshotMismatch(caseId);
        uint256 n = ops.length;
        for (uint256 i = 0; i < n; ++i) {
            if (ops[i] == msg.sender) return weights[i];
        }
        revert NotInSnapshot(caseId, msg.sender);
    }

    /// @dev Takes `slashBps` of everything still in the contract for the operator (bonded
    /// first, then unbonding), pays `rewardBps` of it to `rewardee` and keeps the rest in the
    /// pot. With `jail` (equivocation) the operator is jailed, its advertisement cleared and
    /// what stays bonded forced into unbonding with a fresh delay (still slashable). Without
    /// (fraud) only a bonded remainder below minBond is forced out, so no dust stays bonded.
    /// An operator left holding nothing is removed from the list.
    function _slash(address operator, uint256 rewardBps, address rewardee, bool jail)
        private
        returns (uint256 slashed, uint256 reward)
    {
        Operator storage op = _operators[operator];
        uint256 stake = op.stake;
        uint256 unbonding = op.unbonding;
        slashed = ((stake + unbonding) * slashBps) / BPS;
        if (slashed <= stake) {
            stake -= slashed;
        } else {
            unbonding -= slashed - stake;
            stake = 0;
        }
        reward = (slashed * rewardBps) / BPS;
        slashedPot += slashed - reward;

        if (stake != 0 && (jail || stake < minBond)) {
            unbonding += stake;
            stake = 0;
            uint256 readyAt = block.timestamp + unbondingDelay;
            if (readyAt > op.unbondReadyAt) op.unbondReadyAt = uint40(readyAt);
        }
        op.stake = uint96(stake); // never more than before
        op.unbonding = SafeCast.toUint96(unbonding);
        if (jail) {
            op.adExpiry = 0;
            if (!op.jailed) {
                op.jailed = true;
                emit Jailed(operator);
            }
        }
        emit Slashed(operator, slashed, reward, rewardee);
        if (stake == 0 && unbonding == 0) _removeOperator(operator);
    }

    /// @dev Swap-and-pop; keeps the advertisement nonce and key bindings (no replay, keys
    /// stay bound), clears the advertisement so a re-registration starts not live.
    function _removeOperator(address operator) private {
        Operator storage op = _operators[operator];
        if (!op.registered) return;
        uint256 index = op.listIndex;
        uint256 last = _operatorList.length - 1;
        if (index != last) {
            address moved = _operatorList[last];
            _operatorList[index] = moved;
            _operators[moved].listIndex = uint16(index);
        }
        _operatorList.pop();
        op.registered = false;
        op.listIndex = 0;
        op.adExpiry = 0;
        emit Deregistered(operator);
    }
}
